//! Folding records into per-room state: what [`RoomSnapshot`]s are made of.
//!
//! Pure logic, no I/O. Every operation is last-writer-wins per key or a maximum, so folding a
//! suffix of the log over a state that already contains part of it gives the same result as
//! folding it once — which is what recovery does with the log over the sink's snapshot.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use crate::contract::{Record, RetryKey, RoomSnapshot};

#[derive(Clone, Default)]
struct RoomState {
    snap: RoomSnapshot,
    members: BTreeSet<String>,
    read_pointers: BTreeMap<String, u64>,
    /// seq → (from, client_msg_id, ts_ms) of the newest keyed messages, at most
    /// `retry_keys_max`: keyed by seq, so folding a message twice changes nothing.
    retry: BTreeMap<u64, (String, String, u64)>,
}

/// Rooms by id, being folded.
#[derive(Clone)]
pub struct Rooms {
    rooms: BTreeMap<String, RoomState>,
    retry_keys_max: usize,
}

impl Rooms {
    pub fn new(retry_keys_max: usize) -> Rooms {
        Rooms {
            rooms: BTreeMap::new(),
            retry_keys_max,
        }
    }

    pub fn from_snapshots(snaps: Vec<RoomSnapshot>, retry_keys_max: usize) -> Rooms {
        let mut rooms = Rooms::new(retry_keys_max);
        rooms.overlay(snaps);
        rooms
    }

    /// Lays `snaps` over the rooms held: a newer state of the same rooms (the checkpoint over
    /// the sink's snapshot). Settings and members are replaced (last writer wins); `last_seq`
    /// and read pointers keep the maximum; retry keys are merged by seq. Rooms only one side
    /// knows are kept.
    pub fn overlay(&mut self, snaps: Vec<RoomSnapshot>) {
        let max = self.retry_keys_max;
        for mut snap in snaps {
            let members = std::mem::take(&mut snap.members).into_iter().collect();
            let pointers = std::mem::take(&mut snap.read_pointers);
            let keys = std::mem::take(&mut snap.retry_keys);
            let state = self.room(&snap.room);
            snap.last_seq = snap.last_seq.max(state.snap.last_seq);
            state.snap = snap;
            state.members = members;
            for (user, seq) in pointers {
                let p = state.read_pointers.entry(user).or_default();
                *p = (*p).max(seq);
            }
            for k in keys {
                state
                    .retry
                    .insert(k.seq, (k.from, k.client_msg_id, k.ts_ms));
            }
            trim_retry(&mut state.retry, max);
        }
    }

    fn room(&mut self, room: &str) -> &mut RoomState {
        self.rooms
            .entry(room.to_string())
            .or_insert_with(|| RoomState {
                snap: RoomSnapshot {
                    room: room.to_string(),
                    ..RoomSnapshot::default()
                },
                ..RoomState::default()
            })
    }

    pub fn apply(&mut self, rec: &Record) {
        let max = self.retry_keys_max;
        let state = self.room(rec.room());
        match rec {
            Record::Message {
                seq,
                from,
                ts_ms,
                client_msg_id: Some(key),
                ..
            } => {
                state.snap.last_seq = state.snap.last_seq.max(*seq);
                state
                    .retry
                    .insert(*seq, (from.clone(), key.clone(), *ts_ms));
                trim_retry(&mut state.retry, max);
            }
            Record::Message { seq, .. } | Record::Deleted { seq, .. } => {
                state.snap.last_seq = state.snap.last_seq.max(*seq);
            }
            Record::Room {
                title,
                private,
                password_hash,
                creator,
                created_ms,
                ..
            } => {
                state.snap.title = title.clone();
                state.snap.private = *private;
                state.snap.password_hash = password_hash.clone();
                state.snap.creator = creator.clone();
                state.snap.created_ms = *created_ms;
            }
            Record::Member {
                user, joined: true, ..
            } => {
                state.members.insert(user.clone());
            }
            Record::Member {
                user,
                joined: false,
                ..
            } => {
                state.members.remove(user);
            }
            Record::ReadPointer { user, seq, .. } => {
                let p = state.read_pointers.entry(user.clone()).or_default();
                *p = (*p).max(*seq);
            }
        }
    }

    pub fn into_snapshots(self) -> Vec<RoomSnapshot> {
        self.rooms.into_values().map(into_snapshot).collect()
    }

    /// The rooms as snapshots, leaving them in place (for the checkpoint).
    pub fn snapshots(&self) -> Vec<RoomSnapshot> {
        self.rooms.values().cloned().map(into_snapshot).collect()
    }
}

fn trim_retry(retry: &mut BTreeMap<u64, (String, String, u64)>, max: usize) {
    while retry.len() > max {
        retry.pop_first();
    }
}

fn into_snapshot(s: RoomState) -> RoomSnapshot {
    // A key reused after it left the window belongs to its newest message.
    let mut newest: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for (seq, (from, key, ts_ms)) in s.retry {
        newest.insert((from, key), (seq, ts_ms));
    }
    let mut retry_keys: Vec<RetryKey> = newest
        .into_iter()
        .map(|((from, client_msg_id), (seq, ts_ms))| RetryKey {
            from,
            client_msg_id,
            seq,
            ts_ms,
        })
        .collect();
    retry_keys.sort_by_key(|k| k.seq);
    RoomSnapshot {
        members: s.members.into_iter().collect(),
        read_pointers: s.read_pointers.into_iter().collect(),
        retry_keys,
        ..s.snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_a_suffix_twice_changes_nothing() {
        let log = [
            Record::Member {
                room: "r".into(),
                user: "a".into(),
                joined: true,
            },
            Record::ReadPointer {
                room: "r".into(),
                user: "a".into(),
                seq: 4,
            },
            Record::Message {
                room: "r".into(),
                seq: 5,
                msg_id: "m".into(),
                from: "a".into(),
                name: None,
                body: "x".into(),
                ts_ms: 1,
                client_msg_id: None,
            },
            Record::Member {
                room: "r".into(),
                user: "a".into(),
                joined: false,
            },
            Record::ReadPointer {
                room: "r".into(),
                user: "a".into(),
                seq: 2,
            },
        ];
        let mut once = Rooms::new(4);
        log.iter().for_each(|r| once.apply(r));
        let once = once.into_snapshots();
        let mut twice = Rooms::from_snapshots(once.clone(), 4);
        log[1..].iter().for_each(|r| twice.apply(r));
        assert_eq!(twice.into_snapshots(), once);
        assert_eq!(once[0].last_seq, 5);
        assert!(once[0].members.is_empty());
        assert_eq!(once[0].read_pointers, vec![("a".to_string(), 4)]);
    }

    fn keyed(seq: u64, from: &str, key: &str) -> Record {
        Record::Message {
            room: "r".into(),
            seq,
            msg_id: format!("r:{seq}"),
            from: from.into(),
            name: None,
            body: "b".into(),
            ts_ms: seq * 10,
            client_msg_id: Some(key.into()),
        }
    }

    #[test]
    fn retry_keys_keep_the_newest_window_and_fold_idempotently() {
        let log: Vec<Record> = (1..=6)
            .map(|seq| keyed(seq, "u", &format!("k{seq}")))
            .chain([keyed(7, "u", "k6"), keyed(8, "v", "k6")])
            .collect();
        let mut once = Rooms::new(4);
        log.iter().for_each(|r| once.apply(r));
        let snaps = once.snapshots();
        let keys: Vec<(&str, &str, u64)> = snaps[0]
            .retry_keys
            .iter()
            .map(|k| (k.from.as_str(), k.client_msg_id.as_str(), k.seq))
            .collect();
        // The window is the 4 newest keyed messages (5..=8); a key seen twice is its newest.
        assert_eq!(keys, [("u", "k5", 5), ("u", "k6", 7), ("v", "k6", 8)]);
        assert_eq!(snaps[0].retry_keys[0].ts_ms, 50);
        let mut twice = Rooms::from_snapshots(once.into_snapshots(), 4);
        log[3..].iter().for_each(|r| twice.apply(r));
        assert_eq!(twice.into_snapshots(), snaps);
    }

    #[test]
    fn an_overlay_replaces_members_and_keeps_maxima() {
        let mut older = Rooms::new(4);
        older.apply(&keyed(3, "u", "a"));
        older.apply(&Record::Member {
            room: "r".into(),
            user: "gone".into(),
            joined: true,
        });
        let mut newer = Rooms::new(4);
        newer.apply(&keyed(2, "u", "b"));
        newer.apply(&Record::Member {
            room: "r".into(),
            user: "kept".into(),
            joined: true,
        });
        older.overlay(newer.into_snapshots());
        let snap = older.into_snapshots().remove(0);
        assert_eq!(snap.last_seq, 3);
        assert_eq!(snap.members, ["kept"]);
        assert_eq!(snap.retry_keys.len(), 2);
    }
}
