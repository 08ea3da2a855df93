//! Who a connection is: a JWT (HS256) from `Authorization: Bearer` or `?token=`, checked
//! before the upgrade; or, in development mode (no secret, loopback only), `?user=ID`.

#![forbid(unsafe_code)]

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Longest user id, in bytes (PROTOCOL.md: `sub` is 1–64 bytes).
pub const USER_ID_BYTES_MAX: usize = 64;
/// Longest display name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;

/// The one rule for a user id, wherever it comes from (a token's `sub`, `?user=`, an API
/// `from`, an account's `user`): 1..=[`USER_ID_BYTES_MAX`] bytes, no control characters.
pub fn is_valid_user_id(user: &str) -> bool {
    !user.is_empty() && user.len() <= USER_ID_BYTES_MAX && !user.chars().any(char::is_control)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user: String,
    pub name: Option<String>,
}

/// Why a request was refused with 401; the text is the one-line reason sent to the client.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token: send Authorization: Bearer <jwt> or ?token=<jwt>")]
    Missing,
    #[error("missing user: development mode needs ?user=<id>")]
    MissingDevUser,
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token needs claim `exp`")]
    NoExpiry,
    #[error("user id must be 1..={USER_ID_BYTES_MAX} bytes without control characters")]
    BadUser,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    name: Option<String>,
}

pub struct Auth {
    key: Option<DecodingKey>,
    validation: Validation,
}

impl Auth {
    /// `secret: None` is development mode (the caller has checked the address is loopback).
    pub fn new(secret: Option<&str>) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        Auth {
            key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
        }
    }

    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        query_token: Option<&str>,
        query_user: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let Some(key) = &self.key else {
            let user = query_user.ok_or(AuthError::MissingDevUser)?;
            return Ok(Identity {
                user: valid_user(user)?.to_owned(),
                name: None,
            });
        };
        let token = bearer.or(query_token).ok_or(AuthError::Missing)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::InvalidSignature => AuthError::BadSignature,
                    ErrorKind::MissingRequiredClaim(_) => AuthError::NoExpiry,
                    _ => AuthError::Malformed,
                }
            })?;
        let name = data
            .claims
            .name
            .filter(|n| !n.is_empty() && n.len() <= NAME_BYTES_MAX);
        Ok(Identity {
            user: valid_user(&data.claims.sub)?.to_owned(),
            name,
        })
    }
}

fn valid_user(user: &str) -> Result<&str, AuthError> {
    is_valid_user_id(user)
        .then_some(user)
        .ok_or(AuthError::BadUser)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;

    #[derive(Serialize)]
    struct Out<'a> {
        sub: &'a str,
        exp: u64,
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(secret: &str, sub: &str, exp: u64) -> String {
        encode(
            &Header::default(),
            &Out { sub, exp },
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn verifies_signature_expiry_and_subject() {
        let auth = Auth::new(Some("s3cret"));
        let good = token("s3cret", "alice", now() + 60);
        assert_eq!(
            auth.authenticate(Some(&good), None, None).unwrap().user,
            "alice"
        );
        assert_eq!(
            auth.authenticate(None, Some(&good), None).unwrap().user,
            "alice"
        );
        let forged = token("other", "alice", now() + 60);
        assert_eq!(
            auth.authenticate(Some(&forged), None, None),
            Err(AuthError::BadSignature)
        );
        let old = token("s3cret", "alice", now() - 600);
        assert_eq!(
            auth.authenticate(Some(&old), None, None),
            Err(AuthError::Expired)
        );
        assert_eq!(
            auth.authenticate(Some("x.y.z"), None, None),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.authenticate(None, None, Some("alice")),
            Err(AuthError::Missing)
        );
        let long = token("s3cret", &"a".repeat(USER_ID_BYTES_MAX + 1), now() + 60);
        assert_eq!(
            auth.authenticate(Some(&long), None, None),
            Err(AuthError::BadUser)
        );
    }

    #[test]
    fn dev_mode_takes_the_query_user() {
        let auth = Auth::new(None);
        assert_eq!(
            auth.authenticate(None, None, Some("bob")).unwrap().user,
            "bob"
        );
        assert_eq!(
            auth.authenticate(None, None, None),
            Err(AuthError::MissingDevUser)
        );
    }
}
