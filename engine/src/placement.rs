//! Where a room lives: its home shard, computed the same way by every shard, every process
//! and every release.
//!
//! The hash is **FNV-1a, 64 bits**, over the bytes of the room id (its UTF-8 encoding), and
//! the home is that hash modulo the number of shards. FNV-1a is named and fixed by its
//! specification (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`), so another
//! program — a tool, a test, another instance of a cluster — computes the same home from
//! the same id. std's `DefaultHasher`, used before, is explicitly not promised to stay the
//! same across Rust releases. FNV-1a is not DoS-resistant, and need not be here: a client
//! that picks ids colliding on one shard only loads that shard, which it could do anyway
//! by picking one room.
#![forbid(unsafe_code)]

/// A shard's index in its process, `0..shards`.
pub type ShardId = u16;

/// FNV-1a (64-bit), the one the cluster's rendezvous placement uses too
/// (`sokdo_replication::placement`): one definition for shards and instances.
use sokdo_replication::placement::fnv1a64;

/// The home shard of `room` among `shards`.
pub fn home_of(room: &str, shards: u16) -> ShardId {
    assert!(shards > 0, "a process has at least one shard");
    (fnv1a64(room.as_bytes()) % u64::from(shards)) as ShardId
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published FNV-1a test vectors (Fowler, Noll, Vo: "FNV-1a 64 bit" of "", "a",
    /// "foobar"), and homes that must never change: a restarted or upgraded process, and
    /// any other program, must find every room where it was.
    #[test]
    fn the_hash_is_fnv1a_and_homes_never_move() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(home_of("foobar", 2), (0x8594_4171_f739_67e8u64 % 2) as u16);
        assert_eq!(home_of("a", 7), (0xaf63_dc4c_8601_ec8cu64 % 7) as u16);
        // Room ids are UTF-8: the hash is over the encoded bytes.
        assert_eq!(home_of("방", 3), (fnv1a64("방".as_bytes()) % 3) as u16);
        assert_eq!(home_of("anything", 1), 0);
    }

    #[test]
    fn rooms_spread_over_shards() {
        let homes: Vec<ShardId> = (0..200).map(|i| home_of(&format!("room-{i}"), 4)).collect();
        for shard in 0..4 {
            let n = homes.iter().filter(|h| **h == shard).count();
            assert!(n > 20, "shard {shard} homes only {n} of 200 rooms");
        }
    }
}
