//! Which instance owns a room: rendezvous (highest random weight) hashing over the live
//! members, the same function on every instance and every release.
//!
//! `score(room, node) = splitmix64_finalizer(fnv1a64(room) ^ fnv1a64(node_id))`; a room's
//! order is the members by score descending, ties by node id ascending. The owner is the
//! first, the successor the second. When a member leaves, only the rooms it owned (or
//! succeeded) change owner (successor); when one joins, it takes only the rooms it
//! outranks. Nothing here knows about liveness: the caller passes the members it sees.
//!
//! FNV-1a (64 bits) is fixed by its specification (offset basis `0xcbf29ce484222325`,
//! prime `0x100000001b3`); the engine's home-shard placement uses the same function from
//! here. It is not DoS-resistant and need not be: a client choosing ids only chooses
//! which instance works for it, which it could do anyway with one room.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a (64-bit) of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The finalizer of SplitMix64 (Steele, Lea, Flood 2014): FNV's low bits mix poorly, and
/// XORing two FNV hashes keeps their common structure; this spreads every input bit.
pub fn splitmix64_finalizer(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rendezvous score of `node` for `room`: higher ranks first.
pub fn score(room: &str, node: &str) -> u64 {
    splitmix64_finalizer(fnv1a64(room.as_bytes()) ^ fnv1a64(node.as_bytes()))
}

/// `members` in `room`'s order: score descending, ties by node id ascending. Duplicates
/// are kept as given (the caller's member list has none).
pub fn order<'a, S: AsRef<str>>(room: &str, members: &'a [S]) -> Vec<&'a S> {
    let mut ranked: Vec<(u64, &'a S)> = members
        .iter()
        .map(|m| (score(room, m.as_ref()), m))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.as_ref().cmp(b.1.as_ref())));
    ranked.into_iter().map(|(_, m)| m).collect()
}

/// The owner of `room` among `members`: the first in its order, `None` without members.
pub fn owner<'a, S: AsRef<str>>(room: &str, members: &'a [S]) -> Option<&'a S> {
    best(room, members, None)
}

/// The successor of `room` among `members`: the second in its order.
pub fn successor<'a, S: AsRef<str>>(room: &str, members: &'a [S]) -> Option<&'a S> {
    let first = owner(room, members)?;
    best(room, members, Some(first.as_ref()))
}

/// The highest-ranked member other than `skip`, without sorting.
fn best<'a, S: AsRef<str>>(room: &str, members: &'a [S], skip: Option<&str>) -> Option<&'a S> {
    members
        .iter()
        .filter(|m| Some(m.as_ref()) != skip)
        .map(|m| (score(room, m.as_ref()), m))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.as_ref().cmp(a.1.as_ref())))
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published FNV-1a test vectors (Fowler, Noll, Vo: "", "a", "foobar").
    #[test]
    fn the_hash_is_fnv1a() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// Scores and owners that must never change: every instance, every release, and any
    /// other program must find the same owner. Computed independently in Python:
    ///
    /// ```text
    /// python3 -c "
    /// M=(1<<64)-1
    /// def fnv(b):
    ///   h=0xcbf29ce484222325
    ///   for x in b: h=((h^x)*0x100000001b3)&M
    ///   return h
    /// def mix(z):
    ///   z=((z^(z>>30))*0xbf58476d1ce4e5b9)&M
    ///   z=((z^(z>>27))*0x94d049bb133111eb)&M
    ///   return z^(z>>31)
    /// def score(r,n): return mix(fnv(r.encode())^fnv(n.encode()))
    /// nodes=['node-a','node-b','node-c']
    /// for r in ['general','lobby','방']:
    ///   print(r,[hex(score(r,n)) for n in nodes],sorted(nodes,key=lambda n:(-score(r,n),n)))"
    /// general ['0x9d501f47b5b94262', '0x500ba638fe5983a2', '0x88ed863309ac759c'] ['node-a', 'node-c', 'node-b']
    /// lobby ['0xd8c895a7aac3cad3', '0xb841820b82dc85e4', '0x16af606194672e4d'] ['node-a', 'node-b', 'node-c']
    /// 방 ['0x6e6debdaa9ef7dc', '0x61f6a7651a5e2e', '0x9de9d5e30c446ec0'] ['node-c', 'node-a', 'node-b']
    /// ```
    #[test]
    fn scores_and_owners_match_the_test_vector() {
        let nodes = ["node-a", "node-b", "node-c"];
        let vector: [(&str, [u64; 3], [&str; 3]); 3] = [
            (
                "general",
                [
                    0x9d50_1f47_b5b9_4262,
                    0x500b_a638_fe59_83a2,
                    0x88ed_8633_09ac_759c,
                ],
                ["node-a", "node-c", "node-b"],
            ),
            (
                "lobby",
                [
                    0xd8c8_95a7_aac3_cad3,
                    0xb841_820b_82dc_85e4,
                    0x16af_6061_9467_2e4d,
                ],
                ["node-a", "node-b", "node-c"],
            ),
            (
                "방",
                [
                    0x06e6_debd_aa9e_f7dc,
                    0x0061_f6a7_651a_5e2e,
                    0x9de9_d5e3_0c44_6ec0,
                ],
                ["node-c", "node-a", "node-b"],
            ),
        ];
        for (room, scores, expected) in vector {
            for (node, want) in nodes.iter().zip(scores) {
                assert_eq!(score(room, node), want, "score({room}, {node})");
            }
            let got: Vec<&str> = order(room, &nodes).into_iter().copied().collect();
            assert_eq!(got, expected, "order of {room}");
            assert_eq!(owner(room, &nodes), Some(&expected[0]));
            assert_eq!(successor(room, &nodes), Some(&expected[1]));
        }
        assert_eq!(owner::<&str>("general", &[]), None);
        assert_eq!(successor("general", &["node-b"]), None);
    }

    #[test]
    fn ties_go_to_the_smaller_node_id() {
        // The same id twice scores the same: the order is still total and stable.
        let nodes = ["b", "a", "b"];
        let got: Vec<&str> = order("r", &nodes).into_iter().copied().collect();
        let a_first = score("r", "a") >= score("r", "b");
        assert_eq!(got.len(), 3);
        assert_eq!(got[if a_first { 1 } else { 0 }], "b");
        assert_eq!(got[if a_first { 2 } else { 1 }], "b");
    }

    #[test]
    fn rooms_spread_and_a_leaving_node_moves_only_its_rooms() {
        let nodes: Vec<String> = (0..5).map(|i| format!("node-{i}")).collect();
        let rooms: Vec<String> = (0..2000).map(|i| format!("room-{i}")).collect();
        let before: Vec<&String> = rooms.iter().map(|r| owner(r, &nodes).unwrap()).collect();
        for node in &nodes {
            let n = before.iter().filter(|o| **o == node).count();
            assert!((300..=500).contains(&n), "{node} owns {n} of 2000 rooms");
        }
        let gone = &nodes[2];
        let rest: Vec<String> = nodes.iter().filter(|n| *n != gone).cloned().collect();
        for (room, old) in rooms.iter().zip(&before) {
            let new = owner(room, &rest).unwrap();
            if *old == gone {
                // Its rooms go to their successor, the next in order.
                assert_eq!(Some(new), successor(room, &nodes), "{room}");
            } else {
                assert_eq!(new, *old, "{room} moved though its owner stayed");
            }
        }
        // A joining node takes only rooms it now owns; the others keep their owner.
        let mut more = nodes.clone();
        more.push("node-5".into());
        let taken = rooms
            .iter()
            .zip(&before)
            .filter(|(room, old)| owner(room, &more).unwrap() != **old)
            .inspect(|(room, _)| assert_eq!(owner(room, &more).unwrap(), "node-5"))
            .count();
        assert!(
            (200..=480).contains(&taken),
            "node-5 took {taken} of 2000 rooms"
        );
    }
}
