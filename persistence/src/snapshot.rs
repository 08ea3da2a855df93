//! Folding records into per-room state: what [`RoomSnapshot`]s are made of.
//!
//! Pure logic, no I/O. Every operation is last-writer-wins per key or a maximum, so folding a
//! suffix of the log over a state that already contains part of it gives the same result as
//! folding it once — which is what recovery does with the log over the sink's snapshot.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use crate::contract::{Record, RoomSnapshot};

#[derive(Default)]
struct RoomState {
    snap: RoomSnapshot,
    members: BTreeSet<String>,
    read_pointers: BTreeMap<String, u64>,
}

/// Rooms by id, being folded.
#[derive(Default)]
pub struct Rooms {
    rooms: BTreeMap<String, RoomState>,
}

impl Rooms {
    pub fn from_snapshots(snaps: Vec<RoomSnapshot>) -> Rooms {
        let mut rooms = Rooms::default();
        for mut snap in snaps {
            let members = std::mem::take(&mut snap.members).into_iter().collect();
            let read_pointers = std::mem::take(&mut snap.read_pointers)
                .into_iter()
                .collect();
            rooms.rooms.insert(
                snap.room.clone(),
                RoomState {
                    snap,
                    members,
                    read_pointers,
                },
            );
        }
        rooms
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
        let state = self.room(rec.room());
        match rec {
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
        self.rooms
            .into_values()
            .map(|s| RoomSnapshot {
                members: s.members.into_iter().collect(),
                read_pointers: s.read_pointers.into_iter().collect(),
                ..s.snap
            })
            .collect()
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
        let mut once = Rooms::default();
        log.iter().for_each(|r| once.apply(r));
        let once = once.into_snapshots();
        let mut twice = Rooms::from_snapshots(once.clone());
        log[1..].iter().for_each(|r| twice.apply(r));
        assert_eq!(twice.into_snapshots(), once);
        assert_eq!(once[0].last_seq, 5);
        assert!(once[0].members.is_empty());
        assert_eq!(once[0].read_pointers, vec![("a".to_string(), 4)]);
    }
}
