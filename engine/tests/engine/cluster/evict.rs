//! The room machines in memory are bounded (docs/REPLICATION.md "The log in memory"):
//! beyond `--cluster-rooms-in-memory-max` the cluster thread drops quiescent machines (a
//! replica or an uninvolved member of the room, idle, everything written) and rebuilds
//! one from `cluster.redb` when its room is touched again — here at almost every `Append`.

use super::{
    assert_same_stream, formed_with, msgs_until, one_member_per_instance, send_acked, ALL,
};
use crate::support::eventually;

/// `rounds` rounds of a send by every member of every room, a pause after each; per room,
/// what was acknowledged.
async fn send_rounds(
    members: &mut [Vec<crate::support::Client>],
    rooms: &[String],
    rounds: usize,
) -> Vec<Vec<(u64, String)>> {
    let mut acked: Vec<Vec<(u64, String)>> = vec![Vec::new(); rooms.len()];
    for round in 0..rounds {
        for (r, room) in rooms.iter().enumerate() {
            for (i, member) in members[r].iter_mut().enumerate() {
                let body = format!("{room}-{round}-{i}");
                let seq = send_acked(member, room, &body).await;
                acked[r].push((seq, body));
            }
        }
        // Ticks meanwhile: the replicas' machines go, the next round's appends rebuild them.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn with_one_room_machine_in_memory_the_messages_of_many_rooms_all_arrive_in_order() {
    let c = formed_with(&[
        "--cluster-rooms-in-memory-max",
        "1",
        "--cluster-room-idle-ms",
        "0",
        "--cluster-tick-ms",
        "20",
        "--cluster-log-tail-records",
        "2",
    ])
    .await;
    const ROOMS: usize = 12;
    const ROUNDS: usize = 4;
    let rooms: Vec<String> = (0..ROOMS).map(|r| format!("evict-{r}")).collect();
    let mut members = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        members.push(one_member_per_instance(&c, room, &format!("e{r}-")).await);
    }
    let mut acked = send_rounds(&mut members, &rooms, ROUNDS).await;
    let evicted: Vec<f64> = ALL
        .iter()
        .map(|&i| c.node(i).metric("sokdo_cluster_rooms_evicted_total"))
        .collect();
    assert!(
        evicted.iter().all(|&n| n > 0.0),
        "every instance evicted machines: {evicted:?}"
    );
    for (r, room) in rooms.iter().enumerate() {
        let expected = &mut acked[r];
        expected.sort();
        let last = expected.last().unwrap().1.clone();
        let mut received = Vec::new();
        for member in &mut members[r] {
            received.push(msgs_until(member, &last).await);
        }
        assert_eq!(expected.len(), ROUNDS * ALL.len(), "{room}");
        assert_same_stream(&received, expected);
        let total: usize = received.iter().map(Vec::len).sum();
        assert_eq!(
            total,
            expected.len() * ALL.len(),
            "{room}: received = acked × members"
        );
        assert_eq!(expected[0].0, 1, "{room} starts at seq 1");
    }
    // Once idle, each instance holds at most its owners' machines (and the bound).
    eventually("only the owners' machines in memory", || {
        ALL.iter().all(|&i| {
            let node = c.node(i);
            let (held, owned) = (
                node.metric("sokdo_cluster_rooms"),
                node.metric("sokdo_cluster_rooms_owned"),
            );
            held <= owned.max(1.0)
        })
    })
    .await;
    let owned: f64 = ALL
        .iter()
        .map(|&i| c.node(i).metric("sokdo_cluster_rooms_owned"))
        .sum();
    assert_eq!(owned, ROOMS as f64, "every room has one owner");
}
