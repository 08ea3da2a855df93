//! Cluster membership and quorum with real instances behind a real HAProxy
//! (docs/REPLICATION.md "Membership", "Partitions and quorum", "Deployment behind a load
//! balancer").

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::support::cluster::{TestCluster, API_KEY};
use crate::support::haproxy::{haproxy_cfg, HaproxyParams};
use crate::support::{eventually, seqs_of, Client};

const ALL: [usize; 3] = [0, 1, 2];

async fn formed() -> TestCluster {
    formed_from(TestCluster::start(3)).await
}

/// Three instances started with these environment variables (`TestCluster::start_with_env`).
async fn formed_with_env(env: &[(&str, &str)]) -> TestCluster {
    formed_from(TestCluster::start_with_env(3, env)).await
}

/// Three instances started with `extra` flags, seeing each other, all up in HAProxy.
async fn formed_with(extra: &[&str]) -> TestCluster {
    formed_from(TestCluster::start_with(3, extra)).await
}

async fn formed_from(c: TestCluster) -> TestCluster {
    eventually("3 instances see each other alive", || {
        c.all_see(&ALL, &ALL, "alive")
    })
    .await;
    eventually("haproxy sees all 3 up", || {
        ALL.iter().all(|&i| c.lb_state(i) == "UP")
    })
    .await;
    c
}

/// Connects `n` clients through HAProxy; how many landed on each instance.
async fn spread(c: &TestCluster, n: usize, user: &str) -> (Vec<Client>, HashMap<String, usize>) {
    let mut clients = Vec::new();
    let mut on = HashMap::new();
    for i in 0..n {
        let client = c.haproxy.client(&format!("{user}{i}")).await;
        let instance = client.hello["instance"].as_str().unwrap().to_owned();
        *on.entry(instance).or_default() += 1;
        clients.push(client);
    }
    (clients, on)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_form_a_cluster_and_haproxy_spreads_clients_over_them() {
    let c = formed().await;
    for i in ALL {
        let view = c.view(i);
        assert_eq!(view["enabled"], true);
        assert_eq!(view["node_id"], TestCluster::name(i));
        assert_eq!(view["configured_members"], 3);
        assert_eq!(view["quorum"], true, "{view}");
        let members = view["members"].as_array().unwrap();
        assert_eq!(members.len(), 3, "{view}");
        let others = members.iter().filter(|m| m["self"] == false);
        assert!(
            others.clone().all(|m| m["last_heard_ms_ago"].is_u64()),
            "{view}"
        );
        assert!(others
            .clone()
            .all(|m| m["incarnation"].is_u64() && m["boot"].is_string()));
        assert!(view["datagrams"]["sent"].as_u64().unwrap() > 0, "{view}");
        assert!(
            view["datagrams"]["received"].as_u64().unwrap() > 0,
            "{view}"
        );
        let node = c.node(i);
        assert_eq!(node.get("/readyz").0, 200);
        assert_eq!(node.metric("sokdo_cluster_quorum"), 1.0);
        assert_eq!(node.metric("sokdo_cluster_configured_members"), 3.0);
        assert!(node.metric("sokdo_cluster_datagrams_received_total") > 0.0);
        let (_, metrics) = node.get("/metrics");
        assert!(
            metrics.contains("sokdo_cluster_members{state=\"alive\"} 3"),
            "{metrics}"
        );
    }
    // leastconn: six open connections, two on each instance.
    let (mut clients, on) = spread(&c, 6, "u").await;
    assert_eq!(on.len(), 3, "clients on every instance: {on:?}");
    assert!(on.values().all(|&n| n == 2), "{on:?}");
    clients[0].ok(json!({"op": "join", "room": "lobby"})).await;
    clients[0]
        .ok(json!({"op": "send", "room": "lobby", "body": "hi"}))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_instance_is_seen_down_and_haproxy_routes_around_it() {
    let mut c = formed().await;
    c.kill(2);
    eventually("the others see n3 down", || {
        c.all_see(&[0, 1], &[2], "down")
    })
    .await;
    eventually("haproxy marks n3 down", || c.lb_state(2) == "DOWN").await;
    for i in [0, 1] {
        assert_eq!(c.view(i)["quorum"], true, "two of three keep quorum");
        assert_eq!(c.node(i).get("/readyz").0, 200);
        assert_eq!(
            c.node(i).metric("sokdo_cluster_members{state=\"down\"}"),
            1.0
        );
    }
    let (mut clients, on) = spread(&c, 4, "k").await;
    assert!(!on.contains_key("n3"), "{on:?}");
    assert_eq!(on.len(), 2, "{on:?}");
    clients[0].ok(json!({"op": "join", "room": "r"})).await;
    clients[0]
        .ok(json!({"op": "send", "room": "r", "body": "still served"}))
        .await;
    // Restarted, it is a new identity (another boot) that replaces the old one.
    let old_boot = member_boot(&c, 0, 2);
    c.restart(2);
    eventually("n3 is back alive everywhere", || {
        c.all_see(&ALL, &ALL, "alive")
    })
    .await;
    assert_ne!(member_boot(&c, 0, 2), old_boot);
    assert_eq!(c.view(0)["members"].as_array().unwrap().len(), 3);
    eventually("haproxy routes to n3 again", || c.lb_state(2) == "UP").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_instance_leaves_the_cluster() {
    let mut c = formed().await;
    c.kill(2);
    c.restart_with_env(2, &[("SOKDO_LOG", "info")]);
    eventually("n3 is back", || c.all_see(&ALL, &ALL, "alive")).await;
    let mut n3 = c.take(2);
    n3.signal(libc::SIGTERM);
    assert!(n3.wait_exit(crate::support::WAIT).success());
    assert_eq!(n3.log_lines("left the cluster").len(), 1);
    eventually("the others see n3 down", || {
        c.all_see(&[0, 1], &[2], "down")
    })
    .await;
    assert!(c.view(0)["quorum"] == true && c.view(1)["quorum"] == true);
}

fn member_boot(c: &TestCluster, observer: usize, node: usize) -> String {
    let view = c.view(observer);
    let member = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == TestCluster::name(node))
        .cloned()
        .unwrap();
    member["boot"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_instance_is_down_for_the_others_and_returns_alive_when_continued() {
    let c = formed().await;
    c.node(2).signal(libc::SIGSTOP);
    eventually("the others see the stopped n3 down", || {
        c.all_see(&[0, 1], &[2], "down")
    })
    .await;
    for i in [0, 1] {
        let view = c.view(i);
        assert_eq!(
            view["quorum"], true,
            "the majority side keeps quorum: {view}"
        );
        assert_eq!(view["active_members"], 2, "{view}");
    }
    eventually("haproxy marks the stopped n3 down", || {
        c.lb_state(2) == "DOWN"
    })
    .await;
    c.node(2).signal(libc::SIGCONT);
    eventually("n3 returns alive in every view", || {
        c.all_see(&ALL, &ALL, "alive")
    })
    .await;
    eventually("haproxy routes to n3 again", || c.lb_state(2) == "UP").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_survivor_without_quorum_is_not_ready_and_refuses_sends_until_the_others_return() {
    let mut c = formed().await;
    let mut direct = Client::connect(c.node(0), "alone").await;
    direct.ok(json!({"op": "join", "room": "q"})).await;
    direct
        .ok(json!({"op": "send", "room": "q", "body": "with quorum"}))
        .await;
    c.kill(1);
    c.kill(2);
    eventually("the survivor loses quorum", || c.view(0)["quorum"] == false).await;
    let (status, body) = c.node(0).get("/readyz");
    assert_eq!(status, 503);
    assert!(
        body.contains("no quorum") && body.contains("1 of 3"),
        "{body}"
    );
    assert_eq!(c.node(0).metric("sokdo_cluster_quorum"), 0.0);
    let refused = direct
        .request(json!({"op": "send", "room": "q", "body": "alone"}))
        .await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("no quorum"),
        "{refused}"
    );
    let publish = |c: &TestCluster| {
        c.node(0).http(
            "POST",
            "/api/rooms/q/messages",
            &[("X-Api-Key", API_KEY), ("Content-Type", "application/json")],
            r#"{"body":"from the back end"}"#,
        )
    };
    let (status, body) = publish(&c);
    assert_eq!(status, 503, "the API's publish is a send too: {body}");
    assert!(body.contains("no quorum"), "{body}");
    // Reads still work: history of what was sent with quorum.
    let history = direct
        .ok(json!({"op": "history", "room": "q", "limit": 10}))
        .await;
    assert!(history.to_string().contains("with quorum"), "{history}");
    // A join of a room this instance knows is served from its copy; an unknown room is
    // not created without an owner to decide it.
    let mut other = Client::connect(c.node(0), "other").await;
    other.ok(json!({"op": "join", "room": "q"})).await;
    let unknown = other
        .request(json!({"op": "join", "room": "nowhere"}))
        .await;
    assert_eq!(unknown["code"], "unavailable", "{unknown}");
    eventually("haproxy takes the survivor out too", || {
        c.lb_state(0) == "DOWN"
    })
    .await;

    c.restart(1);
    c.restart(2);
    eventually("quorum is back", || c.view(0)["quorum"] == true).await;
    assert_eq!(c.node(0).get("/readyz").0, 200);
    direct
        .ok(json!({"op": "send", "room": "q", "body": "quorum again"}))
        .await;
    assert_eq!(publish(&c).0, 201);
}

#[test]
fn bad_cluster_flags_stop_the_start_naming_the_flag() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let own = crate::support::cluster::free_udp().to_string();
    // The peer links listen on TCP on the cluster port: a taken TCP port stops the start.
    let tcp_taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_taken_addr = tcp_taken.local_addr().unwrap().to_string();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--peers", "no-such-host.invalid:7946"],
            "--peers no-such-host.invalid:7946",
        ),
        (&["--peers", &own], "own cluster address"),
        (&["--peers", "127.0.0.1:9,127.0.0.1:9"], "listed twice"),
        (
            &["--peers", "127.0.0.1:9", "--cluster-listen", &taken],
            "cannot bind",
        ),
        (
            &[
                "--peers",
                "127.0.0.1:9",
                "--cluster-listen",
                &tcp_taken_addr,
            ],
            "cannot bind (TCP",
        ),
    ];
    for (args, needle) in cases {
        let listen = if args.contains(&"--cluster-listen") {
            vec![]
        } else {
            vec!["--cluster-listen", own.as_str()]
        };
        let data = crate::support::temp_dir("cluster-flags");
        let out = std::process::Command::new(crate::support::sokdo_bin())
            .args(["--listen", "127.0.0.1:0", "--shards", "1", "--node-id", "a"])
            .args(&listen)
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .expect("run sokdo");
        let _ = std::fs::remove_dir_all(&data);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        if needle.starts_with("cannot bind") {
            assert!(stderr.contains("--cluster-listen"), "{stderr}");
        }
    }
}

#[test]
fn the_shipped_haproxy_config_is_the_generated_one() {
    let servers: Vec<(String, String)> = (1..=3)
        .map(|i| (format!("sokdo-{i}"), format!("10.0.0.{i}:8080")))
        .collect();
    let generated = haproxy_cfg(&HaproxyParams {
        bind: "*:80",
        servers: &servers,
        check_inter_ms: 1000,
        maxconn: 200_000,
        stats_socket: None,
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/haproxy.cfg");
    let shipped = std::fs::read_to_string(path).unwrap_or_default();
    if shipped != generated {
        let out = std::env::temp_dir().join("haproxy.cfg.generated");
        std::fs::write(&out, &generated).unwrap();
        panic!(
            "docs/haproxy.cfg differs from what the tests run: the generated one is in {}",
            out.display()
        );
    }
}

// === the data path (docs/REPLICATION.md "Send and deliver") ===

/// One client per instance, connected directly, each a member of `room`.
async fn one_member_per_instance(c: &TestCluster, room: &str, user: &str) -> Vec<Client> {
    let mut clients = Vec::new();
    for i in ALL {
        let mut client = Client::connect(c.node(i), &format!("{user}{i}")).await;
        assert_eq!(client.hello["instance"], TestCluster::name(i));
        client.ok(json!({"op": "join", "room": room})).await;
        clients.push(client);
    }
    clients
}

/// `msg` events until the one with body `last` (included), as (seq, body).
async fn msgs_until(client: &mut Client, last: &str) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    loop {
        let m = client.event_of("msg").await;
        let body = m["body"].as_str().unwrap_or_default().to_owned();
        got.push((m["seq"].as_u64().expect("a msg has a seq"), body.clone()));
        if body == last {
            return got;
        }
    }
}

/// Sends `body` through `client` and returns the `ok`'s seq; `unavailable` (a failover
/// under way, an answer lost) is retried, anything else fails the test. Every attempt
/// carries the body as its `client_msg_id` (bodies are unique in a test), so a retry whose
/// original was stored gets the original's seq instead of a second copy.
async fn send_acked(client: &mut Client, room: &str, body: &str) -> u64 {
    let started = std::time::Instant::now();
    loop {
        let reply = client
            .request(json!({"op": "send", "room": room, "body": body, "client_msg_id": body}))
            .await;
        if reply["op"] == "ok" {
            assert_eq!(reply["room"], room, "{reply}");
            let seq = reply["seq"].as_u64().expect("ok has a seq");
            assert_eq!(reply["msg_id"], format!("{room}:{seq}"), "{reply}");
            return seq;
        }
        assert_eq!(reply["code"], "unavailable", "{body}: {reply}");
        assert!(
            started.elapsed() < crate::support::WAIT,
            "{body} not accepted within the wait: {reply}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

mod dedup;
mod evict;
mod log_tail;

/// Every client received exactly `expected` (seq, body), in seq order, no gap, no repeat.
fn assert_same_stream(received: &[Vec<(u64, String)>], expected: &[(u64, String)]) {
    for (i, got) in received.iter().enumerate() {
        assert_eq!(
            got,
            expected,
            "client on n{} received another stream",
            i + 1
        );
    }
    let seqs: Vec<u64> = expected.iter().map(|(s, _)| *s).collect();
    let first = seqs[0];
    assert_eq!(
        seqs,
        (first..first + seqs.len() as u64).collect::<Vec<_>>(),
        "seqs consecutive"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn members_on_three_instances_receive_every_message_once_in_order() {
    let c = formed().await;
    let mut clients = one_member_per_instance(&c, "across", "a").await;
    let mut acked: Vec<(u64, String)> = Vec::new();
    for round in 0..10 {
        for (i, client) in clients.iter_mut().enumerate() {
            let body = format!("m{i}-{round}");
            let seq = send_acked(client, "across", &body).await;
            acked.push((seq, body));
        }
    }
    acked.sort();
    let last = acked.last().unwrap().1.clone();
    let mut received = Vec::new();
    for client in &mut clients {
        received.push(msgs_until(client, &last).await);
    }
    assert_eq!(acked.len(), 30);
    assert_same_stream(&received, &acked);
    let total: usize = received.iter().map(Vec::len).sum();
    assert_eq!(
        total,
        acked.len() * clients.len(),
        "received = acked × members"
    );
    // A member who joins later on any instance finds the same history.
    for i in ALL {
        let mut late = Client::connect(c.node(i), &format!("late{i}")).await;
        late.ok(json!({"op": "join", "room": "across"})).await;
        let history = late
            .ok(json!({"op": "history", "room": "across", "limit": 100}))
            .await;
        assert_eq!(
            seqs_of(&history),
            (1..=30).collect::<Vec<_>>(),
            "history on n{}",
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_sends_through_every_instance_are_sequenced_by_the_rooms_owner() {
    let c = formed().await;
    let clients = one_member_per_instance(&c, "owned", "s").await;
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for n in 0..20 {
                seqs.push(send_acked(&mut client, "owned", &format!("s{i}-{n}")).await);
            }
            (client, seqs)
        }));
    }
    let mut all = Vec::new();
    let mut clients = Vec::new();
    for task in tasks {
        let (client, seqs) = task.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one sender's seqs increase: {seqs:?}"
        );
        all.extend(seqs);
        clients.push(client);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=60).collect::<Vec<_>>(), "one sequence, no reuse");
    // Exactly one instance sequenced the room: the owner in every view.
    let sequenced: Vec<f64> = ALL
        .iter()
        .map(|&i| c.node(i).metric("sokdo_cluster_records_sequenced_total"))
        .collect();
    assert_eq!(
        sequenced.iter().filter(|&&n| n == 60.0).count(),
        1,
        "{sequenced:?}"
    );
    assert_eq!(sequenced.iter().sum::<f64>(), 60.0, "{sequenced:?}");
    // Every member, on every instance, receives the one sequence.
    for client in &mut clients {
        let mut seqs = Vec::new();
        while seqs.len() < 60 {
            seqs.push(client.event_of("msg").await["seq"].as_u64().unwrap());
        }
        assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    }
}

/// The instance that sequences `room` now and its epoch, from the `/cluster` of each
/// running instance of `among`.
fn owner_of(c: &TestCluster, among: &[usize], room: &str) -> Option<(usize, u64)> {
    among.iter().find_map(|&i| {
        let view = c.view(i);
        let owned = view["data"]["owned"].as_array()?.clone();
        owned
            .iter()
            .find(|r| r["room"] == room)
            .map(|r| (i, r["epoch"].as_u64().unwrap()))
    })
}

/// Waits until one instance of `among` sequences `room`: that instance and its epoch.
async fn sequenced_by(c: &TestCluster, among: &[usize], room: &str) -> (usize, u64) {
    let mut seen = None;
    eventually("one instance lists itself as the room's owner", || {
        seen = owner_of(c, among, room);
        seen.is_some()
    })
    .await;
    seen.unwrap()
}

type Acks = tokio::sync::mpsc::UnboundedReceiver<(u64, String)>;

/// A steady sender: `n` sends of `{tag}-{i}` in turn, each acknowledged (retried on
/// `unavailable`); the acks come on the channel, the client back at the end.
fn steady(
    mut sender: Client,
    room: &'static str,
    tag: String,
    n: usize,
) -> (JoinHandle<Client>, Acks) {
    let (tx, acks) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        for i in 0..n {
            let body = format!("{tag}-{i}");
            let seq = send_acked(&mut sender, room, &body).await;
            tx.send((seq, body)).unwrap();
        }
        sender
    });
    (task, acks)
}

type JoinHandle<T> = tokio::task::JoinHandle<T>;

/// Takes acks from `acks` until `acked` holds `n`.
async fn acked_until(acked: &mut Vec<(u64, String)>, acks: &mut Acks, n: usize) {
    while acked.len() < n {
        acked.push(acks.recv().await.expect("the sender is still sending"));
    }
}

/// Each instance's member of `room` (a client connected directly to it), the room's owner
/// and its epoch after a first acknowledged send.
async fn owned_room(
    c: &TestCluster,
    room: &str,
    user: &str,
) -> (Vec<Option<Client>>, (u64, String), (usize, u64)) {
    let clients = one_member_per_instance(c, room, user).await;
    let mut slots: Vec<Option<Client>> = clients.into_iter().map(Some).collect();
    let first = send_acked(slots[0].as_mut().unwrap(), room, "first").await;
    let owner = sequenced_by(c, &ALL, room).await;
    (slots, (first, "first".to_owned()), owner)
}

/// Seqs strictly increase in the order acknowledged by one sender: none reused.
fn assert_increasing(acked: &[(u64, String)]) {
    let seqs: Vec<u64> = acked.iter().map(|a| a.0).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs never reused: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_owner_killed_under_a_steady_sender_fails_over_without_losing_or_reusing_a_seq() {
    owner_killed_under_a_steady_sender(formed().await).await;
}

/// With `--durability async` the homes' logs are not fsynced before `ok`; what a client's
/// `ok` promises in a cluster — a majority of instances hold the record — is the same.
#[tokio::test(flavor = "multi_thread")]
async fn with_async_durability_the_owner_killed_under_a_steady_sender_loses_no_acknowledged_message(
) {
    let c = formed_with_env(&[("SOKDO_DURABILITY", "async")]).await;
    owner_killed_under_a_steady_sender(c).await;
}

async fn owner_killed_under_a_steady_sender(mut c: TestCluster) {
    let (mut slots, first, (owner, epoch)) = owned_room(&c, "fo", "f").await;
    let others: Vec<usize> = ALL.into_iter().filter(|&i| i != owner).collect();
    let mut victim = slots[owner].take().unwrap();
    let mut reader = slots[others[1]].take().unwrap();
    // A steady sender on a surviving instance.
    let (sending, mut acks) = steady(slots[others[0]].take().unwrap(), "fo", "steady".into(), 60);
    let mut acked = vec![first];
    acked_until(&mut acked, &mut acks, 16).await;
    // The victim's member has seen what was acknowledged so far; then its instance dies.
    let before = msgs_until(&mut victim, &acked.last().unwrap().1).await;
    let victim_last = before.last().unwrap().0;
    c.kill(owner);
    acked_until(&mut acked, &mut acks, 61).await;
    let _sender = sending.await.unwrap();
    assert_increasing(&acked);
    let (new_owner, new_epoch) = sequenced_by(&c, &others, "fo").await;
    assert_ne!(new_owner, owner);
    assert!(new_epoch > epoch, "epoch {epoch} → {new_epoch}");
    // The surviving member received every acknowledged message, in order, each seq once.
    let last_body = acked.last().unwrap().1.clone();
    let stream = msgs_until(&mut reader, &last_body).await;
    assert_complete(&stream, &acked);
    // The victim's user reconnects through HAProxy and resumes from its last seq.
    eventually("haproxy marks the dead owner down", || {
        c.lb_state(owner) == "DOWN"
    })
    .await;
    let mut back = c.haproxy.client(&format!("f{owner}")).await;
    assert_ne!(back.hello["instance"], TestCluster::name(owner));
    // A join is decided by the room's owner: `unavailable` while ownership moves.
    let joined = settled(
        &mut back,
        json!({"op": "join", "room": "fo", "after_seq": victim_last}),
    )
    .await;
    assert_eq!(joined["recovered"], true, "{joined}");
    let missed = msgs_until(&mut back, &last_body).await;
    let expected: Vec<(u64, String)> = stream
        .iter()
        .filter(|(s, _)| *s > victim_last)
        .cloned()
        .collect();
    assert_eq!(missed, expected, "exactly the missed messages, in order");
}

/// `stream` has consecutive seqs, each once, holds every acknowledged (seq, body), and no
/// body twice (exactly once: every send carries a `client_msg_id`).
fn assert_complete(stream: &[(u64, String)], acked: &[(u64, String)]) {
    let seqs: Vec<u64> = stream.iter().map(|m| m.0).collect();
    let first = seqs[0];
    assert_eq!(
        seqs,
        (first..first + seqs.len() as u64).collect::<Vec<_>>(),
        "no gap, no repeat"
    );
    for a in acked {
        assert!(stream.contains(a), "acknowledged {a:?} lost: {stream:?}");
    }
    assert_each_body_once(stream);
}

/// No body is in `stream` twice.
fn assert_each_body_once(stream: &[(u64, String)]) {
    let mut seen = HashMap::new();
    for (seq, body) in stream {
        if let Some(first) = seen.insert(body, seq) {
            panic!("{body} stored twice, at seqs {first} and {seq}: {stream:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_owner_is_replaced_and_rejoins_without_reusing_a_seq() {
    let c = formed().await;
    let (mut slots, first, (owner, epoch)) = owned_room(&c, "pz", "p").await;
    let others: Vec<usize> = ALL.into_iter().filter(|&i| i != owner).collect();
    let mut stopped = slots[owner].take().unwrap();
    let mut reader = slots[others[1]].take().unwrap();
    let (sending, mut acks) = steady(slots[others[0]].take().unwrap(), "pz", "steady".into(), 40);
    let mut acked = vec![first];
    acked_until(&mut acked, &mut acks, 10).await;
    c.node(owner).signal(libc::SIGSTOP);
    eventually("the others see the stopped owner down", || {
        c.all_see(&others, &[owner], "down")
    })
    .await;
    let moved = sequenced_by(&c, &others, "pz").await;
    assert!(moved.1 > epoch, "{moved:?} after epoch {epoch}");
    // Sends go on while the owner is stopped; then it continues.
    acked_until(&mut acked, &mut acks, 20).await;
    c.node(owner).signal(libc::SIGCONT);
    eventually("the stopped owner is back in every view", || {
        c.all_see(&ALL, &ALL, "alive")
    })
    .await;
    acked_until(&mut acked, &mut acks, 41).await;
    let mut sender = sending.await.unwrap();
    assert_increasing(&acked);
    // After it rejoined, more sends, through every instance.
    let last =
        one_send_through_each([&mut sender, &mut reader, &mut stopped], "pz", &mut acked).await;
    let read = msgs_until(&mut reader, &last).await;
    assert_complete(&read, &acked);
    // The member on the instance that was stopped has the same stream, without a gap.
    let resumed = msgs_until(&mut stopped, &last).await;
    assert_eq!(
        resumed, read,
        "the stopped instance's member caught up exactly"
    );
}

/// One acknowledged send through each client, appended to `acked`, whose seqs must still
/// strictly increase; the last body.
async fn one_send_through_each(
    clients: [&mut Client; 3],
    room: &str,
    acked: &mut Vec<(u64, String)>,
) -> String {
    for (i, client) in clients.into_iter().enumerate() {
        let body = format!("after-{i}");
        let seq = send_acked(client, room, &body).await;
        acked.push((seq, body));
    }
    assert_increasing(acked);
    acked.last().unwrap().1.clone()
}

/// A send through `client` that is never acknowledged: its answer is `unavailable`.
async fn send_refused(client: &mut Client, room: &str, body: &str) {
    let reply = client
        .request(json!({"op": "send", "room": room, "body": body}))
        .await;
    assert_eq!(reply["op"], "error", "{body} acknowledged: {reply}");
    assert_eq!(reply["code"], "unavailable", "{body}: {reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_owner_refuses_sends_the_majority_takes_over_and_it_rejoins_without_reusing_a_seq(
) {
    let c = formed().await;
    let (mut slots, first, (owner, epoch)) = owned_room(&c, "cut", "c").await;
    let others: Vec<usize> = ALL.into_iter().filter(|&i| i != owner).collect();
    let mut cut_off = slots[owner].take().unwrap();
    let mut reader = slots[others[1]].take().unwrap();
    let (sending, mut acks) = steady(slots[others[0]].take().unwrap(), "cut", "steady".into(), 40);
    let mut acked = vec![first];
    acked_until(&mut acked, &mut acks, 10).await;
    // The owner's cluster link goes down; its own clients still reach it.
    c.cut(owner);
    // Sent before it can know it is alone: its replica never gets the record, so no `ok`.
    send_refused(&mut cut_off, "cut", "cut-early").await;
    eventually("the majority sees the cut-off owner down", || {
        c.all_see(&others, &[owner], "down")
    })
    .await;
    eventually("the cut-off owner, without quorum, is not ready", || {
        c.node(owner).get("/readyz").0 == 503
    })
    .await;
    eventually("haproxy takes it out", || c.lb_state(owner) == "DOWN").await;
    let moved = sequenced_by(&c, &others, "cut").await;
    assert!(moved.1 > epoch, "{moved:?} after epoch {epoch}");
    // `/cluster` lists what an instance owns once a second: it stops listing the room.
    eventually("the cut-off owner stopped sequencing", || {
        owner_of(&c, &[owner], "cut").is_none()
    })
    .await;
    send_refused(&mut cut_off, "cut", "cut-late").await;
    // The majority side goes on acknowledging meanwhile.
    acked_until(&mut acked, &mut acks, 25).await;
    c.heal(owner);
    eventually("the cut-off owner is back in every view", || {
        c.all_see(&ALL, &ALL, "alive")
    })
    .await;
    acked_until(&mut acked, &mut acks, 41).await;
    let mut sender = sending.await.unwrap();
    let last =
        one_send_through_each([&mut sender, &mut reader, &mut cut_off], "cut", &mut acked).await;
    let read = msgs_until(&mut reader, &last).await;
    assert_complete(&read, &acked);
    // Exactly once: the stream is the acknowledged messages, each at the seq its `ok` named
    // (a steady send whose `ok` was lost in the cut was retried with its `client_msg_id`:
    // the retry got the original's seq). Nothing the cut-off owner was sent is there.
    let mut expected = acked.clone();
    expected.sort();
    assert_eq!(
        read, expected,
        "the stream is the acknowledged messages, each once"
    );
    // The member on the cut-off instance caught up with exactly the same stream.
    let resumed = msgs_until(&mut cut_off, &last).await;
    assert_eq!(
        resumed, read,
        "the cut-off instance's member caught up exactly"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_with_sigterm_loses_no_acknowledged_message() {
    let mut c = formed().await;
    let (slots, first, _) = owned_room(&c, "roll", "r").await;
    drop(slots);
    let mut acked = vec![first];
    for i in ALL {
        // A steady sender on the next instance while instance i drains and restarts.
        let at = (i + 1) % ALL.len();
        let mut sender = Client::connect(c.node(at), &format!("roller{i}")).await;
        // The last restarted instance may be taking the room over: a join waits for it.
        let joined = settled(&mut sender, json!({"op": "join", "room": "roll"})).await;
        assert_eq!(joined["op"], "ok", "{joined}");
        let (sending, mut acks) = steady(sender, "roll", format!("phase{i}"), 15);
        let phase = acked.len();
        acked_until(&mut acked, &mut acks, phase + 5).await;
        let mut stopping = c.take(i);
        stopping.signal(libc::SIGTERM);
        assert!(stopping.wait_exit(crate::support::WAIT).success());
        drop(stopping);
        c.restart(i);
        eventually("the restarted instance is back in every view", || {
            c.all_see(&ALL, &ALL, "alive")
        })
        .await;
        acked_until(&mut acked, &mut acks, phase + 15).await;
        sending.await.unwrap();
    }
    assert_eq!(acked.len(), 46);
    assert_increasing(&acked);
    // On every instance, a member replaying from the start finds every acknowledged message.
    let last = acked.last().unwrap().1.clone();
    for i in ALL {
        let mut late = Client::connect(c.node(i), &format!("after{i}")).await;
        let joined = settled(
            &mut late,
            json!({"op": "join", "room": "roll", "after_seq": 0}),
        )
        .await;
        assert_eq!(joined["op"], "ok", "{joined}");
        let stream = msgs_until(&mut late, &last).await;
        assert_eq!(stream[0].0, 1, "from the first seq on n{}", i + 1);
        assert_complete(&stream, &acked);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_join_with_after_seq_on_an_instance_without_the_room_gets_what_it_missed_from_the_owner()
{
    let c = formed().await;
    // Members on two instances only: the third has never had the room.
    let mut a = Client::connect(c.node(0), "ja").await;
    a.ok(json!({"op": "join", "room": "cold"})).await;
    let mut b = Client::connect(c.node(1), "jb").await;
    b.ok(json!({"op": "join", "room": "cold"})).await;
    let mut acked = Vec::new();
    for n in 0..12 {
        let body = format!("cold-{n}");
        let seq = send_acked(if n % 2 == 0 { &mut a } else { &mut b }, "cold", &body).await;
        acked.push((seq, body));
    }
    let after = acked[4].0;
    // A client that had read up to the fifth message resumes on the third instance.
    let mut resumed = Client::connect(c.node(2), "jc").await;
    let started = std::time::Instant::now();
    let joined = loop {
        let reply = resumed
            .request(json!({"op": "join", "room": "cold", "after_seq": after}))
            .await;
        if reply["op"] == "ok" {
            break reply;
        }
        assert_eq!(reply["code"], "unavailable", "{reply}");
        assert!(
            reply["message"].as_str().unwrap().contains("catching up"),
            "{reply}"
        );
        assert!(started.elapsed() < crate::support::WAIT, "{reply}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(joined["last_seq"], acked.last().unwrap().0, "{joined}");
    assert_eq!(joined["recovered"], true, "{joined}");
    // Then live: one more message after the join.
    let seq = send_acked(&mut a, "cold", "live").await;
    acked.push((seq, "live".to_owned()));
    let got = msgs_until(&mut resumed, "live").await;
    let expected: Vec<(u64, String)> = acked.into_iter().filter(|(s, _)| *s > after).collect();
    assert_eq!(
        got, expected,
        "exactly the missed messages, in order, then live"
    );
}

/// Opens a peer link to node 0 and sends `bytes`; true when the instance closed it.
fn link_closed_after(c: &TestCluster, bytes: &[u8]) -> bool {
    use std::io::{Read as _, Write as _};
    let mut link = std::net::TcpStream::connect(c.cluster_addr(0)).unwrap();
    link.set_read_timeout(Some(crate::support::WAIT)).unwrap();
    link.write_all(bytes).unwrap();
    let mut buf = [0u8; 16];
    // The instance never writes on a link it accepted: a read ends only when it closes.
    matches!(link.read(&mut buf), Ok(0) | Err(_)) && link.read(&mut buf).map_or(true, |n| n == 0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_link_with_a_bad_hello_is_refused_and_logged() {
    use sokdo_replication::frame::{encode, Frame, PROTOCOL_VERSION};
    let c = formed().await;
    let hello = |version: u32, node_id: &str, boot_id: u64| {
        encode(&Frame::Hello {
            version,
            node_id: node_id.to_owned(),
            boot_id,
        })
        .unwrap()
    };
    let cases: [(Vec<u8>, &str); 4] = [
        (hello(PROTOCOL_VERSION + 1, "n2", 1), "protocol version"),
        (
            hello(PROTOCOL_VERSION, "intruder", 1),
            "not an active member",
        ),
        (hello(PROTOCOL_VERSION, "n2", 1), "boot"),
        (b"\x05\x00\x00\x00garbage".to_vec(), "cluster link refused"),
    ];
    for (bytes, why) in cases {
        assert!(link_closed_after(&c, &bytes), "{why}: the link stays open");
        eventually(&format!("the refusal logged: {why}"), || {
            let refused = c.node(0).log_lines("cluster link refused");
            refused.iter().any(|l| l.contains(why))
        })
        .await;
    }
    // The instance still serves its real peers.
    assert!(c.all_see(&ALL, &ALL, "alive"));
    let mut clients = one_member_per_instance(&c, "after-refusals", "h").await;
    send_acked(&mut clients[1], "after-refusals", "still linked").await;
    for client in &mut clients {
        msgs_until(client, "still linked").await;
    }
}

/// Sends `n` messages through `client` without waiting between them (pipelined, within the
/// request burst) and returns the acknowledged ones as (seq, body).
async fn burst(client: &mut Client, room: &str, tag: String, n: usize) -> Vec<(u64, String)> {
    let bodies: HashMap<u64, String> = (0..n as u64)
        .map(|i| (1_000_000 + i, format!("{tag}-{i}")))
        .collect();
    for (id, body) in &bodies {
        let req = json!({"op": "send", "id": id, "room": room, "body": body});
        client.send_raw(&req.to_string()).await;
    }
    let mut acked = Vec::new();
    let mut answered = 0;
    while answered < n {
        let v = client.recv().await;
        let Some(body) = v["id"].as_u64().and_then(|id| bodies.get(&id)) else {
            continue; // an event (this sender is a member too)
        };
        answered += 1;
        if v["op"] == "ok" {
            acked.push((v["seq"].as_u64().expect("ok has a seq"), body.clone()));
        } else {
            assert_eq!(v["code"], "unavailable", "{v}");
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lagging_home_shard_is_caught_up_with_every_record_and_its_queue_stays_bounded() {
    let mut c = formed().await;
    // n3 queues at most one record for its home shard: a burst of deliveries outruns it.
    let mut old = c.take(2);
    old.signal(libc::SIGTERM);
    assert!(old.wait_exit(crate::support::WAIT).success());
    drop(old);
    c.restart_with_env(2, &[("SOKDO_CLUSTER_HOME_QUEUE_RECORDS", "1")]);
    eventually("n3 is back in every view", || {
        c.all_see(&ALL, &ALL, "alive")
    })
    .await;
    // A join is decided by the room's owner: `unavailable` while n3's return moves it.
    let mut watcher = Client::connect(c.node(2), "watcher").await;
    let joined = settled(&mut watcher, json!({"op": "join", "room": "lag"})).await;
    assert_eq!(joined["op"], "ok", "{joined}");
    let mut senders = Vec::new();
    for s in 0..4 {
        let mut sender = Client::connect(c.node(s % 2), &format!("lagger{s}")).await;
        let joined = settled(&mut sender, json!({"op": "join", "room": "lag"})).await;
        assert_eq!(joined["op"], "ok", "{joined}");
        senders.push(sender);
    }
    // Bursts until n3 has shed records at least once (bounded: each burst is 160 sends).
    let mut acked = Vec::new();
    for round in 0..10 {
        let bursts = senders
            .iter_mut()
            .enumerate()
            .map(|(s, sender)| burst(sender, "lag", format!("b{round}-{s}"), 40));
        for got in futures_util::future::join_all(bursts).await {
            acked.extend(got);
        }
        if c.node(2).metric("sokdo_cluster_records_shed_total") > 0.0 {
            break;
        }
    }
    assert!(
        c.node(2).metric("sokdo_cluster_records_shed_total") > 0.0,
        "n3's home shard never lagged behind 1,600 deliveries"
    );
    let last = send_acked(&mut senders[0], "lag", "end").await;
    acked.push((last, "end".to_owned()));
    acked.sort();
    let received = msgs_until(&mut watcher, "end").await;
    assert_same_stream(&[received], &acked);
    assert!(c.node(2).metric("sokdo_cluster_replays_asked_total") > 0.0);
}

/// Stops the instances `which` at once (`SIGTERM`: each drains and exits; `SIGKILL`: dead
/// on the spot), then starts them again on their data directories (with `env`), until
/// every instance sees every other alive.
async fn stop_all_then_restart(
    c: &mut TestCluster,
    which: &[usize],
    signal: i32,
    env: &[(&str, &str)],
) {
    let mut stopping: Vec<_> = which.iter().map(|&i| c.take(i)).collect();
    for s in &stopping {
        s.signal(signal);
    }
    for s in &mut stopping {
        let status = s.wait_exit(crate::support::WAIT);
        if signal == libc::SIGTERM {
            assert!(status.success(), "{status:?}");
        }
    }
    drop(stopping);
    for &i in which {
        c.restart_with_env(i, env);
    }
    eventually("every instance is back in every view", || {
        c.all_see(&ALL, &ALL, "alive")
    })
    .await;
}

/// A member on each instance (reconnected after a restart) that joins `room` with
/// `after_seq: 0`: what each received up to the message `last`.
async fn every_member_from_the_start(
    c: &TestCluster,
    room: &str,
    user: &str,
    last: &str,
) -> Vec<Vec<(u64, String)>> {
    let mut streams = Vec::new();
    for i in ALL {
        let mut member = Client::connect(c.node(i), &format!("{user}{i}")).await;
        member
            .ok(json!({"op": "join", "room": room, "after_seq": 0}))
            .await;
        streams.push(msgs_until(&mut member, last).await);
    }
    streams
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_cluster_restart_loses_no_acknowledged_message_and_reuses_no_seq() {
    let mut c = formed().await;
    let (slots, first, _) = owned_room(&c, "whole", "w").await;
    drop(slots);
    let mut acked = vec![first];
    // Twice: every instance killed at once, then every instance drained at once.
    for (round, signal) in [(0, libc::SIGKILL), (1, libc::SIGTERM)] {
        let mut clients = one_member_per_instance(&c, "whole", &format!("w{round}-")).await;
        for n in 0..9 {
            let body = format!("r{round}-{n}");
            acked.push((send_acked(&mut clients[n % 3], "whole", &body).await, body));
        }
        drop(clients);
        let before = acked.last().unwrap().0;
        stop_all_then_restart(&mut c, &ALL, signal, &[]).await;
        // Sends after the restart continue the seqs, and every member is shown them.
        let mut clients = one_member_per_instance(&c, "whole", &format!("v{round}-")).await;
        for (i, client) in clients.iter_mut().enumerate() {
            let body = format!("r{round}-after-{i}");
            acked.push((send_acked(client, "whole", &body).await, body));
        }
        let last = acked.last().unwrap().1.clone();
        let after = acked[acked.len() - 3].0;
        assert!(
            after > before,
            "round {round}: seq {after} after {before}: reused"
        );
        for (i, member) in clients.iter_mut().enumerate() {
            let live = msgs_until(member, &last).await;
            assert_eq!(
                live,
                acked[acked.len() - 3..],
                "round {round}: the member on n{}",
                i + 1
            );
        }
        let last = acked.last().unwrap().1.clone();
        let streams = every_member_from_the_start(&c, "whole", &format!("h{round}-"), &last).await;
        for stream in &streams {
            assert_eq!(stream[0].0, 1, "from the first seq");
            assert_complete(stream, &acked);
            assert_eq!(stream.len(), acked.len(), "each acknowledged message once");
        }
    }
    assert_eq!(acked.len(), 1 + 2 * (9 + 3));
    assert_increasing(&acked);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_owner_and_its_successor_killed_together_lose_no_acknowledged_message() {
    let mut c = formed().await;
    let (mut slots, first, (owner, _)) = owned_room(&c, "pair", "p").await;
    let names: Vec<String> = ALL.iter().map(|&i| TestCluster::name(i)).collect();
    let order = sokdo_replication::placement::order("pair", &names);
    let index = |name: &String| ALL.into_iter().find(|&i| TestCluster::name(i) == *name);
    assert_eq!(
        index(order[0]),
        Some(owner),
        "the owner is first in rendezvous order"
    );
    let successor = index(order[1]).unwrap();
    let third = index(order[2]).unwrap();
    let mut sender = slots[third].take().unwrap();
    let mut acked = vec![first];
    for n in 0..12 {
        let body = format!("pair-{n}");
        acked.push((send_acked(&mut sender, "pair", &body).await, body));
    }
    // The two holders of every acknowledged record die together; the third alone has no
    // quorum and refuses, so nothing is sequenced meanwhile.
    kill_owner_and_successor_then_restart(&mut c, owner, successor, &mut sender).await;
    let mut clients = one_member_per_instance(&c, "pair", "q").await;
    let [a, b, d] = &mut clients[..] else {
        unreachable!("three instances")
    };
    let last = one_send_through_each([a, b, d], "pair", &mut acked).await;
    assert_increasing(&acked);
    let streams = every_member_from_the_start(&c, "pair", "z", &last).await;
    for stream in &streams {
        assert_eq!(stream[0].0, 1, "from the first seq");
        assert_complete(stream, &acked);
        assert_eq!(stream.len(), acked.len(), "each acknowledged message once");
    }
}

/// `kill -9` of `owner` and `successor` together; while they are down, a send through the
/// survivor is refused (no quorum); then both start again on their data directories.
async fn kill_owner_and_successor_then_restart(
    c: &mut TestCluster,
    owner: usize,
    successor: usize,
    survivor_client: &mut Client,
) {
    let (o, s) = (c.take(owner), c.take(successor));
    o.signal(libc::SIGKILL);
    s.signal(libc::SIGKILL);
    drop((o, s));
    let survivor = ALL
        .into_iter()
        .find(|&i| i != owner && i != successor)
        .unwrap();
    eventually("the survivor has no quorum", || {
        c.node(survivor).get("/readyz").0 == 503
    })
    .await;
    send_refused(survivor_client, "pair", "while-two-are-down").await;
    c.restart(owner);
    c.restart(successor);
    eventually("every instance is back in every view", || {
        c.all_see(&ALL, &ALL, "alive")
    })
    .await;
}

#[test]
fn an_unreadable_cluster_log_stops_the_start_naming_the_file() {
    let data = crate::support::temp_dir("cluster-redb");
    let file = data.join("cluster.redb");
    std::fs::write(&file, vec![0x5a; 64 * 1024]).unwrap();
    let own = crate::support::cluster::free_udp().to_string();
    let out = std::process::Command::new(crate::support::sokdo_bin())
        .args(["--listen", "127.0.0.1:0", "--shards", "1", "--node-id", "a"])
        .args(["--cluster-listen", &own, "--peers", "127.0.0.1:9"])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("run sokdo");
    let kept = std::fs::read(&file).unwrap();
    let _ = std::fs::remove_dir_all(&data);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        kept,
        vec![0x5a; 64 * 1024],
        "the file is left for inspection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_async_durability_a_whole_cluster_drained_at_once_loses_nothing() {
    let mut c = formed().await;
    let asynchronous = [("SOKDO_DURABILITY", "async")];
    stop_all_then_restart(&mut c, &ALL, libc::SIGTERM, &asynchronous).await;
    for i in ALL {
        assert!(!c.node(i).log_lines("durability = async").is_empty());
    }
    let (slots, first, _) = owned_room(&c, "lazy", "l").await;
    drop(slots);
    let mut acked = vec![first];
    let mut clients = one_member_per_instance(&c, "lazy", "m").await;
    for n in 0..9 {
        let body = format!("lazy-{n}");
        acked.push((send_acked(&mut clients[n % 3], "lazy", &body).await, body));
    }
    drop(clients);
    // A clean stop fsyncs what the 50 ms window still held.
    stop_all_then_restart(&mut c, &ALL, libc::SIGTERM, &asynchronous).await;
    let mut clients = one_member_per_instance(&c, "lazy", "n").await;
    for (i, client) in clients.iter_mut().enumerate() {
        let body = format!("lazy-after-{i}");
        acked.push((send_acked(client, "lazy", &body).await, body));
    }
    assert_increasing(&acked);
    let last = acked.last().unwrap().1.clone();
    for stream in every_member_from_the_start(&c, "lazy", "o", &last).await {
        assert_eq!(stream[0].0, 1, "from the first seq");
        assert_complete(&stream, &acked);
        assert_eq!(stream.len(), acked.len(), "each acknowledged message once");
    }
}

// === room metadata (docs/REPLICATION.md "Room metadata") ===

/// `req` through `client` until it is not `unavailable` (a failover under way): the reply.
async fn settled(client: &mut Client, req: Value) -> Value {
    let started = std::time::Instant::now();
    loop {
        let reply = client.request(req.clone()).await;
        if reply["code"] != "unavailable" {
            return reply;
        }
        assert!(
            started.elapsed() < crate::support::WAIT,
            "{req} still unavailable: {reply}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The instance that owns `room` (from `/cluster`) and its metadata's version.
fn meta_version(c: &TestCluster, among: &[usize], room: &str) -> Option<(usize, u64)> {
    among.iter().find_map(|&i| {
        let view = c.view(i);
        let owned = view["data"]["owned"].as_array()?.clone();
        let r = owned.iter().find(|r| r["room"] == room)?;
        Some((i, r["meta_version"].as_u64()?))
    })
}

fn vault_join(password: Option<&str>) -> Value {
    match password {
        Some(p) => json!({"op": "join", "room": "vault", "password": p}),
        None => json!({"op": "join", "room": "vault"}),
    }
}

fn vault_create() -> Value {
    json!({"op": "create", "room": "vault", "private": true, "password": "sesame"})
}

/// `vault`'s message `seq` in `client`'s `history`: a tombstone.
async fn assert_tombstone(client: &mut Client, seq: u64) {
    let h = client.ok(json!({"op": "history", "room": "vault"})).await;
    let m = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["seq"] == seq)
        .cloned();
    let m = m.unwrap_or_else(|| panic!("no seq {seq} in the history: {h}"));
    assert!(m["deleted"] == true && m.get("body").is_none(), "{h}");
}

/// Through instance `i`: a join without or with a wrong password is `forbidden`, a create
/// `room_exists`; a member admitted with `password`, returned.
async fn refused_then_admitted(c: &TestCluster, i: usize, password: &str) -> Client {
    let mut eve = Client::connect(c.node(i), &format!("eve{i}-{password}")).await;
    assert_eq!(eve.hello["instance"], TestCluster::name(i));
    for wrong in [None, Some("wrong"), Some("sesame")]
        .into_iter()
        .filter(|p| *p != Some(password))
    {
        let reply = settled(&mut eve, vault_join(wrong)).await;
        assert_eq!(reply["code"], "forbidden", "n{} {wrong:?}: {reply}", i + 1);
    }
    let reply = settled(&mut eve, vault_create()).await;
    assert_eq!(reply["code"], "room_exists", "n{}: {reply}", i + 1);
    let mut member = Client::connect(c.node(i), &format!("bob{i}-{password}")).await;
    let reply = settled(&mut member, vault_join(Some(password))).await;
    assert_eq!(reply["op"], "ok", "n{}: {reply}", i + 1);
    member
}

/// Waits until one instance of `among` owns `vault` with its metadata at `version`.
async fn vault_owner_at(c: &TestCluster, among: &[usize], version: u64) -> usize {
    // `/cluster` lists what an instance owns once a second.
    let mut owner = None;
    eventually("an owner lists the room's metadata at the version", || {
        owner = meta_version(c, among, "vault").filter(|(_, v)| *v == version);
        owner.is_some()
    })
    .await;
    owner.unwrap().0
}

/// A private room is checked by its owner whatever instance a join reaches: without or
/// with a wrong password it is refused on every instance, with the right one admitted;
/// its creation elsewhere is `room_exists`; a password change through another instance
/// holds everywhere; a delete through one instance reaches the subscribers of all and
/// every instance's history; and all of it holds on the new owner after the old is killed.
#[tokio::test(flavor = "multi_thread")]
async fn a_private_room_and_its_deletes_are_one_per_cluster_and_survive_the_owners_loss() {
    let mut c = formed().await;
    let mut ann = Client::connect(c.node(0), "ann").await;
    ann.ok(vault_create()).await;
    ann.ok(vault_join(None)).await;
    let mut members = vec![ann];
    for i in [1, 2] {
        members.push(refused_then_admitted(&c, i, "sesame").await);
    }
    // The creator changes the title and password through another instance: the old
    // password is refused everywhere, the new one admitted; every copy has the title.
    let mut ann2 = Client::connect(c.node(2), "ann").await;
    let update =
        json!({"op": "update_room", "room": "vault", "title": "V", "password": "new-pass"});
    ann2.ok(update).await;
    for i in ALL {
        refused_then_admitted(&c, i, "new-pass").await;
        let rooms = members[i]
            .ok(json!({"op": "rooms", "query": "vault"}))
            .await;
        assert_eq!(rooms["rooms"][0]["title"], "V", "n{}: {rooms}", i + 1);
    }
    // A message from the member on n2, deleted through n2: `deleted` on every instance;
    // the member on n3 (neither its author nor the room's creator) may not.
    let seq = send_acked(&mut members[1], "vault", "oops").await;
    let delete = json!({"op": "delete", "room": "vault", "seq": seq});
    let reply = members[2].request(delete.clone()).await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    members[1].ok(delete).await;
    for m in &mut members {
        let d = m.event_of("deleted").await;
        assert_eq!(
            (d["seq"].as_u64(), d["by"].as_str()),
            (Some(seq), Some("bob1-sesame")),
            "{d}"
        );
        assert_tombstone(m, seq).await;
    }
    // Created, updated, deleted: three versions of the metadata. The owner is killed; a
    // survivor takes the room over with the same metadata (not a copy adopted from an
    // instance, which would be version 1).
    let owner = vault_owner_at(&c, &ALL, 3).await;
    c.kill(owner);
    let survivors: Vec<usize> = ALL.into_iter().filter(|&i| i != owner).collect();
    vault_owner_at(&c, &survivors, 3).await;
    for &i in &survivors {
        let mut member = refused_then_admitted(&c, i, "new-pass").await;
        assert_tombstone(&mut member, seq).await;
    }
}

/// After a whole-cluster restart the owner has lost the room's metadata (it is held in
/// memory): a join through an instance whose store knows the room is decided on that
/// copy (the seed), so the private room stays private.
#[tokio::test(flavor = "multi_thread")]
async fn a_private_room_stays_private_across_a_whole_cluster_restart() {
    let mut c = formed().await;
    let mut ann = Client::connect(c.node(0), "ann").await;
    ann.ok(vault_create()).await;
    for i in [1, 2] {
        refused_then_admitted(&c, i, "sesame").await;
    }
    vault_owner_at(&c, &ALL, 1).await;
    // The metadata is on disk with the log: a whole-cluster restart keeps it.
    for i in ALL {
        c.kill(i);
    }
    for i in ALL {
        c.restart(i);
    }
    eventually("3 instances see each other alive again", || {
        c.all_see(&ALL, &ALL, "alive")
    })
    .await;
    // Before any request could bring a seed: the owner loaded version 1 from its disk.
    vault_owner_at(&c, &ALL, 1).await;
    let mut eve = Client::connect(c.node(1), "eve-after").await;
    let reply = settled(&mut eve, vault_join(None)).await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    vault_owner_at(&c, &ALL, 1).await;
    for i in ALL {
        refused_then_admitted(&c, i, "sesame").await;
    }
    // Every cluster log lost at once (instances from before the metadata was on disk, or
    // all started on copies of their stores only): the owner holds no metadata, and the
    // first join's seed — the asking instance's copy of the room — keeps it private.
    for i in ALL {
        c.kill(i);
        std::fs::remove_file(c.data_dir(i).join("cluster.redb")).expect("a cluster log");
    }
    for i in ALL {
        c.restart(i);
    }
    eventually("3 instances see each other alive once more", || {
        c.all_see(&ALL, &ALL, "alive")
    })
    .await;
    vault_owner_at(&c, &ALL, 0).await;
    let mut mallory = Client::connect(c.node(1), "mallory").await;
    let reply = settled(&mut mallory, vault_join(None)).await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    // Adopted: version 1 at the new owner; every instance refuses, then admits.
    vault_owner_at(&c, &ALL, 1).await;
    for i in ALL {
        refused_then_admitted(&c, i, "sesame").await;
    }
}
