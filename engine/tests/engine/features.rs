//! The chat features of the seed services, over real WebSockets, members on both shards.

use serde_json::{json, Value};

use crate::support::{seqs_of, Client, Server};

/// Two clients on different shards (the kernel spreads connections; keep connecting).
async fn pair_on_two_shards(server: &Server, a: &str, b: &str) -> (Client, Client) {
    let first = Client::connect(server, a).await;
    for _ in 0..200 {
        let second = Client::connect(server, b).await;
        if second.shard() != first.shard() {
            return (first, second);
        }
    }
    panic!("connections never landed on both shards");
}

fn room_entry<'a>(reply: &'a Value, room: &str) -> Option<&'a Value> {
    reply["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == room)
}

#[tokio::test]
async fn read_receipts_and_unread_counts_exclude_own_messages() {
    let server = Server::start(&[]);
    let (mut a, mut b) = pair_on_two_shards(&server, "a", "b").await;
    a.ok(json!({"op": "join", "room": "r"})).await;
    b.ok(json!({"op": "join", "room": "r"})).await;
    for body in ["one", "two"] {
        a.ok(json!({"op": "send", "room": "r", "body": body})).await;
    }
    let rooms_b = b.ok(json!({"op": "rooms", "joined": true})).await;
    assert_eq!(room_entry(&rooms_b, "r").unwrap()["unread"], 2);
    let rooms_a = a.ok(json!({"op": "rooms", "joined": true})).await;
    let entry = room_entry(&rooms_a, "r").unwrap();
    assert_eq!(
        (entry["unread"].clone(), entry["last_seq"].clone()),
        (json!(0), json!(2)),
        "own messages are not unread"
    );

    let read = b.ok(json!({"op": "read", "room": "r", "seq": 1})).await;
    assert_eq!(read["seq"], 1);
    // A send moves no pointer: the first `read` event is b's.
    let event = a.event_of("read").await;
    assert_eq!(
        (event["user"].as_str(), event["seq"].as_u64()),
        (Some("b"), Some(1))
    );
    let back = b.ok(json!({"op": "read", "room": "r", "seq": 0})).await;
    assert_eq!(back["seq"], 1, "the pointer moves forward only");
    let joined = b.ok(json!({"op": "join", "room": "r"})).await;
    assert_eq!(joined["unread"], 1);

    let mut c = Client::connect(&server, "c").await;
    assert_eq!(
        c.request(json!({"op": "read", "room": "r", "seq": 1}))
            .await["code"],
        "not_member"
    );
}

#[tokio::test]
async fn delete_leaves_a_tombstone_for_the_author_or_creator_only() {
    let server = Server::start(&[]);
    let (mut owner, mut other) = pair_on_two_shards(&server, "owner", "other").await;
    owner.ok(json!({"op": "create", "room": "d"})).await;
    owner.ok(json!({"op": "join", "room": "d"})).await;
    other.ok(json!({"op": "join", "room": "d"})).await;
    let mine = owner
        .ok(json!({"op": "send", "room": "d", "body": "owner's"}))
        .await["seq"]
        .as_u64()
        .unwrap();
    let theirs = other
        .ok(json!({"op": "send", "room": "d", "body": "other's"}))
        .await["seq"]
        .as_u64()
        .unwrap();

    let denied = other
        .request(json!({"op": "delete", "room": "d", "seq": mine}))
        .await;
    assert_eq!(denied["code"], "forbidden");
    other
        .ok(json!({"op": "delete", "room": "d", "seq": theirs}))
        .await;
    let event = owner.event_of("deleted").await;
    assert_eq!(
        (event["seq"].as_u64(), event["by"].as_str()),
        (Some(theirs), Some("other"))
    );
    owner
        .ok(json!({"op": "delete", "room": "d", "seq": mine}))
        .await; // the creator may delete any
    assert_eq!(other.event_of("deleted").await["seq"], json!(theirs));
    assert_eq!(other.event_of("deleted").await["seq"], json!(mine));

    let history = other.ok(json!({"op": "history", "room": "d"})).await;
    for m in history["messages"].as_array().unwrap() {
        assert_eq!(m["deleted"], true, "{m}");
        assert!(m.get("body").is_none(), "a tombstone has no body: {m}");
    }
    let missing = owner
        .request(json!({"op": "delete", "room": "d", "seq": 99}))
        .await;
    assert_eq!(missing["code"], "not_found");
}

#[tokio::test]
async fn private_rooms_need_their_password_and_stay_unlisted() {
    let server = Server::start(&[]);
    let (mut owner, mut guest) = pair_on_two_shards(&server, "owner", "guest").await;
    let no_password = owner
        .request(json!({"op": "create", "room": "vault", "private": true}))
        .await;
    assert_eq!(no_password["code"], "bad_request");
    owner.ok(json!({"op": "create", "room": "vault", "title": "Vault", "private": true, "password": "열려라"})).await;
    owner.ok(json!({"op": "join", "room": "vault"})).await;

    assert_eq!(
        guest.request(json!({"op": "join", "room": "vault"})).await["code"],
        "forbidden"
    );
    assert_eq!(
        guest
            .request(json!({"op": "join", "room": "vault", "password": "wrong"}))
            .await["code"],
        "forbidden"
    );
    assert_eq!(
        guest
            .request(json!({"op": "history", "room": "vault"}))
            .await["code"],
        "not_member"
    );
    let listed = guest.ok(json!({"op": "rooms", "query": "vault"})).await;
    assert!(
        room_entry(&listed, "vault").is_none(),
        "private rooms are listed to members only"
    );

    guest
        .ok(json!({"op": "join", "room": "vault", "password": "열려라"}))
        .await;
    let listed = guest.ok(json!({"op": "rooms", "query": "VAULT"})).await;
    assert_eq!(room_entry(&listed, "vault").unwrap()["private"], true);

    assert_eq!(
        guest
            .request(json!({"op": "update_room", "room": "vault", "password": "x"}))
            .await["code"],
        "forbidden"
    );
    owner
        .ok(json!({"op": "update_room", "room": "vault", "password": "new-pass"}))
        .await;
    let mut late = Client::connect(&server, "late").await;
    assert_eq!(
        late.request(json!({"op": "join", "room": "vault", "password": "열려라"}))
            .await["code"],
        "forbidden"
    );
    late.ok(json!({"op": "join", "room": "vault", "password": "new-pass"}))
        .await;
}

#[tokio::test]
async fn rooms_search_and_paginate_with_a_cursor() {
    let server = Server::start(&[]);
    let mut c = Client::connect(&server, "c").await;
    for i in 1..=5 {
        c.ok(json!({"op": "create", "room": format!("page-{i}"), "title": format!("Study Group {i}")})).await;
    }
    c.ok(json!({"op": "create", "room": "other", "title": "Lunch"}))
        .await;
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let mut req = json!({"op": "rooms", "query": "study", "limit": 2});
        if !cursor.is_null() {
            req["cursor"] = cursor.clone();
        }
        let page = c.ok(req).await;
        let rooms = page["rooms"].as_array().unwrap();
        assert!(rooms.len() <= 2);
        seen.extend(rooms.iter().map(|r| r["room"].as_str().unwrap().to_owned()));
        cursor = page["cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(seen, ["page-1", "page-2", "page-3", "page-4", "page-5"]);
    let by_id = c.ok(json!({"op": "rooms", "query": "OTH"})).await;
    assert_eq!(by_id["rooms"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn presence_spans_shards_and_typing_goes_to_the_others() {
    let server = Server::start(&["--typing-interval-ms", "60000"]);
    let (mut a, mut b) = pair_on_two_shards(&server, "a", "b").await;
    a.ok(json!({"op": "join", "room": "p"})).await;
    b.ok(json!({"op": "join", "room": "p"})).await;
    let presence = a.ok(json!({"op": "presence", "room": "p"})).await;
    assert_eq!(presence["users"], json!(["a", "b"]));

    a.ok(json!({"op": "typing", "room": "p"})).await;
    let typing = b.event_of("typing").await;
    assert_eq!(typing["user"], "a");
    assert_eq!(
        a.request(json!({"op": "typing", "room": "p"})).await["code"],
        "rate_limited"
    );
    // The typer got no typing event of its own: the next event it sees is this message.
    b.ok(json!({"op": "send", "room": "p", "body": "marker"}))
        .await;
    loop {
        let e = a.event().await;
        assert_ne!(e["op"], "typing", "typing must not echo to the typer");
        if e["op"] == "msg" {
            break;
        }
    }
    let mut outsider = Client::connect(&server, "o").await;
    assert_eq!(
        outsider.request(json!({"op": "typing", "room": "p"})).await["code"],
        "not_member"
    );
}

#[tokio::test]
async fn korean_search_finds_substrings_without_spaces() {
    let server = Server::start(&[]);
    let mut c = Client::connect(&server, "c").await;
    c.ok(json!({"op": "join", "room": "k"})).await;
    for body in [
        "오늘 회의는 세시에 합니다",
        "점심은 김밥",
        "회의록 공유합니다",
    ] {
        c.ok(json!({"op": "send", "room": "k", "body": body})).await;
    }
    let found = seqs_of;
    assert_eq!(
        found(
            &c.ok(json!({"op": "search", "room": "k", "query": "회의"}))
                .await
        ),
        [3, 1],
        "newest first"
    );
    assert_eq!(
        found(
            &c.ok(json!({"op": "search", "room": "k", "query": "세시"}))
                .await
        ),
        [1]
    );
    assert_eq!(
        found(
            &c.ok(json!({"op": "search", "room": "k", "query": "의는"}))
                .await
        ),
        [1]
    );
    let hit = c
        .ok(json!({"op": "search", "room": "k", "query": "세시"}))
        .await;
    assert_eq!(hit["messages"][0]["body"], "오늘 회의는 세시에 합니다");
    assert_eq!(
        found(
            &c.ok(json!({"op": "search", "room": "k", "query": "저녁"}))
                .await
        ),
        Vec::<u64>::new()
    );
    assert_eq!(
        c.request(json!({"op": "search", "room": "k"})).await["code"],
        "bad_request"
    );
}
