//! Room passwords: argon2id hashes in PHC format. The clear password is never stored or
//! logged; hashing and checking run on glommio's blocking pool, never on a shard.

#![forbid(unsafe_code)]

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::wire::protocol::{ErrorCode, ProtoError};

/// Longest accepted password, in bytes.
pub const PASSWORD_BYTES_MAX: usize = 128;

pub fn check_length(password: &str) -> Result<(), ProtoError> {
    if password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
        return Err(ProtoError::new(
            ErrorCode::BadRequest,
            format!("`password` must be 1..={PASSWORD_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// The argon2id hash of `password` (CPU- and memory-heavy: call off the shard).
pub fn hash(password: &str) -> Result<String, ProtoError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| ProtoError::new(ErrorCode::Internal, "could not hash the password"))
}

/// Whether `password` matches `hash` (call off the shard).
pub fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_never_contain_the_password() {
        let h = hash("열려라 참깨").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("열려라"));
        assert!(verify("열려라 참깨", &h));
        assert!(!verify("wrong", &h));
        assert!(!verify("x", "not a hash"));
    }
}
