//! The refusals a room's rules give: by the home on one instance, by the room's owner in a
//! cluster (`cluster::meta`). One wording for both.

use crate::wire::protocol::{ErrorCode, ProtoError};

pub fn room_exists(room: &str) -> ProtoError {
    ProtoError::new(ErrorCode::RoomExists, format!("room `{room}` exists"))
}

pub fn no_room(room: &str) -> ProtoError {
    ProtoError::new(ErrorCode::NotFound, format!("no room `{room}`"))
}

pub fn not_creator() -> ProtoError {
    ProtoError::new(
        ErrorCode::Forbidden,
        "only the room's creator may change it",
    )
}

pub fn private_needs_password() -> ProtoError {
    ProtoError::new(ErrorCode::BadRequest, "a private room needs a `password`")
}

pub fn no_message(room: &str, seq: u64) -> ProtoError {
    ProtoError::new(ErrorCode::NotFound, format!("no message {seq} in `{room}`"))
}

pub fn not_author_or_creator() -> ProtoError {
    ProtoError::new(
        ErrorCode::Forbidden,
        "only the author or the room's creator may delete a message",
    )
}
