//! A clustered room's metadata as the engine encodes it in the room's replicated
//! `frame::Meta` (docs/REPLICATION.md "Room metadata"): its creator, title, whether it is
//! private and its password's hash, and the seqs deleted. The room's **owner** decides
//! every request about it ([`decide`], on the cluster thread, from the metadata it holds
//! and its log), the room machine replicates the result like a record, and the homes apply
//! what a majority holds to their copy of the room (`home::clustered`).
//!
//! Pure: bytes and values in, a decision out. The owner never hashes or checks a password
//! (argon2 stays off the cluster thread): a `join` only fetches the metadata, and the home
//! that received it checks the password against the owner's hash.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::room::refusals;
use crate::wire::protocol::{ErrorCode, ProtoError};

/// Deleted seqs one room's metadata records. The whole metadata travels with every change
/// (to each replica, then to each interested instance), so this bounds those frames: at
/// most about 4,096 × (a seq and a user id of up to 64 bytes) ≈ 300 KB.
pub const DELETED_MAX: usize = 4096;

/// What a room's metadata says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMeta {
    pub creator: String,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub private: bool,
    /// The argon2id hash (never the password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// Deleted seq → who deleted it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deleted: BTreeMap<u64, String>,
}

impl RoomMeta {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("room metadata serialises")
    }

    pub fn decode(bytes: &[u8]) -> Option<RoomMeta> {
        serde_json::from_slice(bytes).ok()
    }
}

/// A request about a room's metadata, as a home sends it to the room's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MetaOp {
    Create {
        user: String,
        created_ms: u64,
        title: Option<String>,
        private: bool,
        password_hash: Option<String>,
    },
    /// The room as it is; an unknown room is created public when `auto_create`
    /// (`--auto-create-rooms`).
    Join {
        user: String,
        created_ms: u64,
        auto_create: bool,
    },
    Update {
        user: String,
        title: Option<String>,
        private: Option<bool>,
        password_hash: Option<String>,
    },
    Delete {
        user: String,
        seq: u64,
    },
}

/// A request and what the asking instance's copy of the room says: an owner that holds no
/// metadata for the room adopts it (the cluster's metadata is in memory only; after a
/// whole-cluster restart the instances' stores still know the room, its creator and its
/// password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRequest {
    pub room: String,
    pub op: MetaOp,
    #[serde(default)]
    pub seed: Option<RoomMeta>,
}

impl MetaRequest {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a metadata request serialises")
    }
}

/// A refusal as it travels back to the asking instance.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Code {
    BadRequest,
    Forbidden,
    NotFound,
    RoomExists,
    Unavailable,
}

#[derive(Debug, Serialize, Deserialize)]
struct Refusal {
    code: Code,
    why: String,
}

/// `error` for `Frame::MetaRefused`.
pub fn encode_refusal(error: &ProtoError) -> Vec<u8> {
    let code = match error.code {
        ErrorCode::BadRequest => Code::BadRequest,
        ErrorCode::Forbidden => Code::Forbidden,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::RoomExists => Code::RoomExists,
        _ => Code::Unavailable,
    };
    let refusal = Refusal {
        code,
        why: error.message.clone(),
    };
    serde_json::to_vec(&refusal).expect("a refusal serialises")
}

/// The client's error from a `Frame::MetaRefused` (bytes from a peer: anything else is
/// `unavailable`).
pub fn decode_refusal(bytes: &[u8]) -> ProtoError {
    let Ok(r) = serde_json::from_slice::<Refusal>(bytes) else {
        return ProtoError::new(
            ErrorCode::Unavailable,
            "the room's owner refused with an answer this instance cannot read: retry",
        );
    };
    let code = match r.code {
        Code::BadRequest => ErrorCode::BadRequest,
        Code::Forbidden => ErrorCode::Forbidden,
        Code::NotFound => ErrorCode::NotFound,
        Code::RoomExists => ErrorCode::RoomExists,
        Code::Unavailable => ErrorCode::Unavailable,
    };
    ProtoError::new(code, r.why)
}

/// What the owner holds of the room, for a decision.
pub struct Held<'a> {
    pub meta: Option<&'a [u8]>,
    /// The highest acknowledged seq.
    pub committed: u64,
    /// The author of an acknowledged seq, if the owner's log holds it.
    pub author_of: &'a dyn Fn(u64) -> Option<String>,
}

/// The owner's decision on `request` (the bytes a home sent): the room's new metadata
/// (`None`: unchanged, the request is answered with what a majority holds), or the
/// refusal for the client.
pub fn decide(held: &Held<'_>, request: &[u8]) -> Result<Option<RoomMeta>, ProtoError> {
    let Ok(request) = serde_json::from_slice::<MetaRequest>(request) else {
        return Err(ProtoError::new(
            ErrorCode::BadRequest,
            "the room's owner cannot read this request (another release?)",
        ));
    };
    let current = held.meta.and_then(RoomMeta::decode);
    let adopted = current.is_none() && request.seed.is_some();
    let base = current.or(request.seed);
    let room = request.room.as_str();
    let changed = match (request.op, base.clone()) {
        (MetaOp::Create { .. }, Some(_)) => return Err(refusals::room_exists(room)),
        (
            MetaOp::Create {
                user,
                created_ms,
                title,
                private,
                password_hash,
            },
            None,
        ) => Some(RoomMeta {
            creator: user,
            created_ms,
            title,
            private,
            password_hash,
            deleted: BTreeMap::new(),
        }),
        (MetaOp::Join { .. }, Some(_)) => None,
        (
            MetaOp::Join {
                user,
                created_ms,
                auto_create: true,
            },
            None,
        ) => Some(RoomMeta {
            creator: user,
            created_ms,
            title: None,
            private: false,
            password_hash: None,
            deleted: BTreeMap::new(),
        }),
        (MetaOp::Join { .. } | MetaOp::Update { .. } | MetaOp::Delete { .. }, None) => {
            return Err(refusals::no_room(room))
        }
        (
            MetaOp::Update {
                user,
                title,
                private,
                password_hash,
            },
            Some(meta),
        ) => Some(update(meta, &user, (title, private, password_hash))?),
        (MetaOp::Delete { user, seq }, Some(meta)) => delete(held, room, meta, &user, seq)?,
    };
    Ok(changed.or_else(|| base.filter(|_| adopted)))
}

fn update(
    mut meta: RoomMeta,
    user: &str,
    (title, private, password_hash): (Option<String>, Option<bool>, Option<String>),
) -> Result<RoomMeta, ProtoError> {
    if meta.creator != user {
        return Err(refusals::not_creator());
    }
    let password_hash = password_hash.or(meta.password_hash.take());
    if private == Some(true) && password_hash.is_none() {
        return Err(refusals::private_needs_password());
    }
    if let Some(title) = title {
        meta.title = Some(title);
    }
    if let Some(private) = private {
        meta.private = private;
    }
    meta.password_hash = password_hash;
    Ok(meta)
}

fn delete(
    held: &Held<'_>,
    room: &str,
    mut meta: RoomMeta,
    user: &str,
    seq: u64,
) -> Result<Option<RoomMeta>, ProtoError> {
    if seq == 0 || seq > held.committed {
        return Err(refusals::no_message(room, seq));
    }
    if meta.deleted.contains_key(&seq) {
        return Ok(None);
    }
    let Some(author) = (held.author_of)(seq) else {
        return Err(refusals::no_message(room, seq));
    };
    if author != user && meta.creator != user {
        return Err(refusals::not_author_or_creator());
    }
    if meta.deleted.len() >= DELETED_MAX {
        return Err(ProtoError::new(
            ErrorCode::Unavailable,
            format!("room `{room}` has {DELETED_MAX} deleted messages, the most a clustered room records"),
        ));
    }
    meta.deleted.insert(seq, user.to_owned());
    Ok(Some(meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held<'a>(meta: Option<&'a [u8]>, author_of: &'a dyn Fn(u64) -> Option<String>) -> Held<'a> {
        Held {
            meta,
            committed: 3,
            author_of,
        }
    }

    fn ask(room: &str, op: MetaOp, seed: Option<RoomMeta>) -> Vec<u8> {
        MetaRequest {
            room: room.into(),
            op,
            seed,
        }
        .encode()
    }

    fn private_room() -> RoomMeta {
        RoomMeta {
            creator: "ann".into(),
            created_ms: 1,
            title: None,
            private: true,
            password_hash: Some("$argon2id$x".into()),
            deleted: BTreeMap::new(),
        }
    }

    #[test]
    fn the_owner_decides_create_join_update_and_delete() {
        let by_bob = |seq: u64| (seq == 2).then(|| "bob".to_owned());
        let none = held(None, &by_bob);
        let create = MetaOp::Create {
            user: "ann".into(),
            created_ms: 1,
            title: None,
            private: true,
            password_hash: Some("$argon2id$x".into()),
        };
        let made = decide(&none, &ask("r", create.clone(), None)).unwrap();
        assert_eq!(made, Some(private_room()));
        let bytes = private_room().encode();
        let some = held(Some(&bytes), &by_bob);
        let again = decide(&some, &ask("r", create, None)).unwrap_err();
        assert_eq!(again.code, ErrorCode::RoomExists);
        // A join changes nothing of a known room; an unknown one is created public only
        // with auto-create; a seed is adopted by an owner that has nothing.
        let join = |auto_create| MetaOp::Join {
            user: "eve".into(),
            created_ms: 2,
            auto_create,
        };
        assert_eq!(decide(&some, &ask("r", join(true), None)).unwrap(), None);
        let public = decide(&none, &ask("r", join(true), None)).unwrap().unwrap();
        assert!(!public.private && public.creator == "eve");
        let refused = decide(&none, &ask("r", join(false), None)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::NotFound);
        let seeded = decide(&none, &ask("r", join(true), Some(private_room()))).unwrap();
        assert_eq!(seeded, Some(private_room()));
        // Only the creator updates; private needs a password.
        let update = |user: &str, private| MetaOp::Update {
            user: user.into(),
            title: Some("t".into()),
            private,
            password_hash: None,
        };
        let e = decide(&some, &ask("r", update("eve", None), None)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        let titled = decide(&some, &ask("r", update("ann", None), None))
            .unwrap()
            .unwrap();
        assert_eq!(titled.title.as_deref(), Some("t"));
        assert!(titled.password_hash.is_some(), "kept");
        // The author or the creator deletes an acknowledged seq, once.
        let delete = |user: &str, seq| MetaOp::Delete {
            user: user.into(),
            seq,
        };
        let e = decide(&some, &ask("r", delete("eve", 2), None)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        for seq in [0, 4] {
            let e = decide(&some, &ask("r", delete("bob", seq), None)).unwrap_err();
            assert_eq!(e.code, ErrorCode::NotFound, "seq {seq}");
        }
        let gone = decide(&some, &ask("r", delete("bob", 2), None))
            .unwrap()
            .unwrap();
        assert_eq!(gone.deleted.get(&2).map(String::as_str), Some("bob"));
        let gone_bytes = gone.encode();
        let deleted = held(Some(&gone_bytes), &by_bob);
        assert_eq!(
            decide(&deleted, &ask("r", delete("ann", 2), None)).unwrap(),
            None
        );
    }

    #[test]
    fn garbage_gives_errors_not_panics() {
        let nobody = |_: u64| None;
        let e = decide(&held(None, &nobody), b"{not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(decode_refusal(b"\xff").code, ErrorCode::Unavailable);
        let back = decode_refusal(&encode_refusal(&refusals::room_exists("r")));
        assert_eq!(
            (back.code, back.message.as_str()),
            (ErrorCode::RoomExists, "room `r` exists")
        );
    }
}
