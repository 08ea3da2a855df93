//! Who a connection is: a JWT from `Authorization: Bearer` or `?token=`, checked before the
//! upgrade (and again by `refresh`); or, in development mode (no key, loopback only),
//! `?user=ID`.
//!
//! A token is accepted only in the algorithm of a key the server holds: HS256 with
//! `--jwt-secret`, RS256 or ES256 with `--jwt-public-key-file` (the key's type decides
//! which). The algorithm is never taken from the token: an HS256 token "signed" with the
//! public key's bytes, `alg: none` and any other algorithm are refused. `crit` is refused
//! (sokdo understands no header extension, RFC 7515 §4.1.11); `exp` is required; `nbf` and
//! `iat` are checked, all with `--jwt-leeway-s`.

#![forbid(unsafe_code)]

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Longest user id, in bytes (PROTOCOL.md: `sub` is 1–64 bytes).
pub const USER_ID_BYTES_MAX: usize = 64;
/// Longest display name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// `--jwt-leeway-s` by default (config.rs repeats the number: it does not import `wire`).
#[allow(dead_code)] // used by `Auth::new`
pub const LEEWAY_S_DEFAULT: u64 = 5;

/// The one rule for a user id, wherever it comes from (a token's `sub`, `?user=`, an API
/// `from`, an account's `user`): 1..=[`USER_ID_BYTES_MAX`] bytes, in Unicode NFC, and every
/// character visible ([`is_visible_id_char`]). Refused rather than normalised: two ids an
/// issuer tells apart must not become one user here.
pub fn is_valid_user_id(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= USER_ID_BYTES_MAX
        && user.chars().all(is_visible_id_char)
        && unicode_normalization::is_nfc(user)
}

/// A character that may appear in a user id: not a control, format (zero-width, bidi
/// controls, soft hyphen), private-use, unassigned or surrogate code point, not a line or
/// paragraph separator, no space but U+0020, and none of the invisible letters and
/// selectors that pass those categories (Hangul fillers, combining grapheme joiner,
/// variation selectors, Mongolian selectors, Khmer inherent vowels).
pub fn is_visible_id_char(c: char) -> bool {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    if c == ' ' {
        return true;
    }
    let invisible_category = matches!(
        c.general_category(),
        G::Control
            | G::Format
            | G::Surrogate
            | G::PrivateUse
            | G::Unassigned
            | G::LineSeparator
            | G::ParagraphSeparator
            | G::SpaceSeparator
    );
    let invisible_letter = matches!(
        c,
        '\u{034F}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FFA0}'
            | '\u{E0100}'..='\u{E01EF}'
    );
    !invisible_category && !invisible_letter
}

/// The wall clock as jsonwebtoken reads it for `exp`, in seconds since the Unix epoch: the
/// expiry of an open connection is checked against the same clock as its token was.
pub fn now_unix_s() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user: String,
    pub name: Option<String>,
    /// The token's `exp` (seconds since the epoch); `None` in development mode.
    pub exp: Option<u64>,
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
    #[error("token algorithm is not accepted by this server")]
    Algorithm,
    #[error("token header `crit` names an extension this server does not understand")]
    Critical,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token needs claim `exp`")]
    NoExpiry,
    #[error("user id must be 1..={USER_ID_BYTES_MAX} bytes in NFC without control, format or invisible characters")]
    BadUser,
}

/// Why `--jwt-public-key-file` cannot be used (the caller names the flag and the file).
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM public key (expected -----BEGIN PUBLIC KEY-----, SubjectPublicKeyInfo)")]
    NotPublicKeyPem,
    #[error(
        "unsupported key type: only RSA (RS256) and EC P-256 (ES256) public keys are accepted"
    )]
    UnsupportedType,
}

/// A verifying key read from `--jwt-public-key-file`, with the one algorithm it verifies.
pub struct PublicKey {
    alg: Algorithm,
    key: DecodingKey,
}

impl PublicKey {
    /// An SPKI PEM (`-----BEGIN PUBLIC KEY-----`): RSA → RS256, EC P-256 → ES256; any other
    /// type (P-384, Ed25519, a private key, a certificate) is refused.
    pub fn from_pem(pem: &str) -> Result<PublicKey, KeyError> {
        use p256::pkcs8::DecodePublicKey as _;
        use rsa::traits::PublicKeyParts as _;
        let pem = pem.trim();
        if !pem.starts_with("-----BEGIN PUBLIC KEY-----") {
            return Err(KeyError::NotPublicKeyPem);
        }
        if let Ok(rsa) = rsa::RsaPublicKey::from_public_key_pem(pem) {
            let key = DecodingKey::from_rsa_raw_components(
                &rsa.n().to_bytes_be(),
                &rsa.e().to_bytes_be(),
            );
            return Ok(PublicKey {
                alg: Algorithm::RS256,
                key,
            });
        }
        if let Ok(ec) = p256::PublicKey::from_public_key_pem(pem) {
            use p256::elliptic_curve::sec1::ToEncodedPoint as _;
            let point = ec.to_encoded_point(false);
            return Ok(PublicKey {
                alg: Algorithm::ES256,
                key: DecodingKey::from_ec_der(point.as_bytes()),
            });
        }
        Err(KeyError::UnsupportedType)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    name: Option<String>,
    exp: u64,
    iat: Option<u64>,
}

pub struct Auth {
    secret: Option<DecodingKey>,
    public: Option<PublicKey>,
    leeway_s: u64,
}

impl Auth {
    /// HS256 with `secret` and the default leeway; `secret: None` is development mode (the
    /// caller has checked the address is loopback). The server uses [`Auth::with_keys`];
    /// this one is kept for unit tests and the fuzz targets' entry point.
    #[allow(dead_code)]
    pub fn new(secret: Option<&str>) -> Auth {
        Auth::with_keys(secret, None, LEEWAY_S_DEFAULT)
    }

    /// Either key or both (a token's `alg` picks the key: HS256 the secret, the public
    /// key's algorithm the public key); neither is development mode.
    pub fn with_keys(secret: Option<&str>, public: Option<PublicKey>, leeway_s: u64) -> Auth {
        Auth {
            secret: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            public,
            leeway_s,
        }
    }

    /// No key: `?user=` is taken as is.
    pub fn dev_mode(&self) -> bool {
        self.secret.is_none() && self.public.is_none()
    }

    /// A token with `exp` is still good at `now_s` (the same rule as at the upgrade).
    pub fn expired(&self, exp: u64, now_s: u64) -> bool {
        now_s > exp.saturating_add(self.leeway_s)
    }

    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        query_token: Option<&str>,
        query_user: Option<&str>,
    ) -> Result<Identity, AuthError> {
        if self.dev_mode() {
            let user = query_user.ok_or(AuthError::MissingDevUser)?;
            return Ok(Identity {
                user: valid_user(user)?.to_owned(),
                name: None,
                exp: None,
            });
        }
        let token = bearer.or(query_token).ok_or(AuthError::Missing)?;
        self.verify(token)
    }

    /// A token, by the keys and rules of this server (`refresh` uses it as is).
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.crit.is_some() {
            return Err(AuthError::Critical);
        }
        let key = match (&self.secret, &self.public) {
            (Some(secret), _) if header.alg == Algorithm::HS256 => secret,
            (_, Some(public)) if header.alg == public.alg => &public.key,
            _ => return Err(AuthError::Algorithm),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway_s;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::MissingRequiredClaim(_) => AuthError::NoExpiry,
            _ => AuthError::Malformed,
        })?;
        let claims = data.claims;
        if claims
            .iat
            .is_some_and(|iat| iat > now_unix_s().saturating_add(self.leeway_s))
        {
            return Err(AuthError::IssuedInFuture);
        }
        let name = claims
            .name
            .filter(|n| !n.is_empty() && n.len() <= NAME_BYTES_MAX);
        Ok(Identity {
            user: valid_user(&claims.sub)?.to_owned(),
            name,
            exp: Some(claims.exp),
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
    fn user_ids_are_visible_nfc_text() {
        for ok in [
            "alice",
            "al ice",
            "앨리스",
            "\u{e9}lodie",
            "o'neil+1@x",
            "😀",
        ] {
            assert!(is_valid_user_id(ok), "{ok:?}");
        }
        for bad in [
            "",
            "ali\u{200b}ce",
            "\u{202e}abc",
            "a\u{00ad}b",
            "a\u{feff}",
            "a\u{2060}b",
            "a\u{00a0}b",
            "a\u{3000}b",
            "a\u{3164}b",
            "a\u{115f}b",
            "a\u{fe0f}",
            "a\u{e000}",
            "a\u{2028}b",
            "a\nb",
            "e\u{0301}",
        ] {
            assert!(!is_valid_user_id(bad), "{bad:?}");
        }
        assert!(!is_valid_user_id(&"a".repeat(USER_ID_BYTES_MAX + 1)));
    }

    #[test]
    fn public_keys_of_other_types_are_refused() {
        assert_eq!(
            PublicKey::from_pem("not a key").err(),
            Some(KeyError::NotPublicKeyPem)
        );
        let garbage = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert_eq!(
            PublicKey::from_pem(garbage).err(),
            Some(KeyError::UnsupportedType)
        );
    }

    #[test]
    fn the_algorithm_comes_from_the_keys_not_the_token() {
        let auth = Auth::new(Some("s3cret"));
        let mut header = Header::new(jsonwebtoken::Algorithm::HS384);
        let claims = Out {
            sub: "alice",
            exp: now() + 60,
        };
        let key = EncodingKey::from_secret(b"s3cret");
        let hs384 = encode(&header, &claims, &key).unwrap();
        assert_eq!(auth.verify(&hs384), Err(AuthError::Algorithm));
        header = Header::default();
        header.crit = Some(vec![]);
        let crit = encode(&header, &claims, &key).unwrap();
        assert_eq!(auth.verify(&crit), Err(AuthError::Critical));
    }

    #[test]
    fn expiry_counts_the_leeway() {
        let auth = Auth::with_keys(Some("k"), None, 5);
        assert!(!auth.expired(100, 105));
        assert!(auth.expired(100, 106));
        assert!(!auth.expired(u64::MAX, u64::MAX));
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
