//! Optional accounts (`--accounts`), for deployments without an identity service:
//! register, log in (returns a JWT), change a password. Passwords are argon2id hashes in a
//! small redb file beside the store (`accounts.redb`).
//!
//! Every call here blocks (disk, argon2): the HTTP layer runs them on glommio's blocking
//! pool, never on a shard. Failed logins are rate-limited per shard by the caller.

use std::path::Path;

use jsonwebtoken::{EncodingKey, Header};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::auth::{NAME_BYTES_MAX, USER_ID_BYTES_MAX};
use crate::password;
use crate::protocol::{ErrorCode, ProtoError};

/// user id → JSON `Account`.
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");

#[derive(Serialize, Deserialize)]
struct Account {
    hash: String,
    name: Option<String>,
}

/// An HTTP status with a protocol error.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub error: ProtoError,
}

impl ApiError {
    pub fn new(status: u16, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: ProtoError::new(code, message),
        }
    }
}

impl From<ProtoError> for ApiError {
    fn from(error: ProtoError) -> ApiError {
        ApiError {
            status: crate::api::status_of(error.code),
            error,
        }
    }
}

fn storage(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "accounts store");
    ApiError::new(500, ErrorCode::Internal, "accounts store failed")
}

pub struct Accounts {
    db: Database,
    key: EncodingKey,
    token_ttl_s: u64,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    exp: u64,
}

/// What a successful login returns.
#[derive(Serialize)]
pub struct Login {
    pub token: String,
    pub user: String,
    pub expires_at: u64,
}

impl Accounts {
    pub fn open(path: &Path, jwt_secret: &str, token_ttl_s: u64) -> anyhow::Result<Accounts> {
        let db = redb::Builder::new().set_cache_size(1 << 20).create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(ACCOUNTS)?;
        txn.commit()?;
        Ok(Accounts {
            db,
            key: EncodingKey::from_secret(jwt_secret.as_bytes()),
            token_ttl_s,
        })
    }

    fn get(&self, user: &str) -> Result<Option<Account>, ApiError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(ACCOUNTS).map_err(storage)?;
        let Some(raw) = table.get(user).map_err(storage)? else {
            return Ok(None);
        };
        serde_json::from_slice(raw.value())
            .map(Some)
            .map_err(storage)
    }

    fn put(&self, user: &str, account: &Account, must_be_new: bool) -> Result<(), ApiError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(ACCOUNTS).map_err(storage)?;
            if must_be_new && table.get(user).map_err(storage)?.is_some() {
                return Err(ApiError::new(
                    409,
                    ErrorCode::BadRequest,
                    format!("user `{user}` exists"),
                ));
            }
            let raw = serde_json::to_vec(account).map_err(storage)?;
            table.insert(user, raw.as_slice()).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    pub fn register(&self, user: &str, pass: &str, name: Option<&str>) -> Result<(), ApiError> {
        check_user(user)?;
        password::check_length(pass)?;
        if name.is_some_and(|n| n.is_empty() || n.len() > NAME_BYTES_MAX) {
            return Err(ApiError::new(
                400,
                ErrorCode::BadRequest,
                format!("`name` must be 1..={NAME_BYTES_MAX} bytes"),
            ));
        }
        let account = Account {
            hash: password::hash(pass)?,
            name: name.map(str::to_owned),
        };
        self.put(user, &account, true)
    }

    /// Checks the password and mints a token. `Err` with status 401 on a wrong one.
    pub fn login(&self, user: &str, pass: &str) -> Result<Login, ApiError> {
        let wrong = || ApiError::new(401, ErrorCode::Unauthorized, "wrong user or password");
        let account = self.get(user)?.ok_or_else(wrong)?;
        if !password::verify(pass, &account.hash) {
            return Err(wrong());
        }
        let expires_at = crate::clock::now_ms() / 1000 + self.token_ttl_s;
        let claims = Claims {
            sub: user,
            name: account.name.as_deref(),
            exp: expires_at,
        };
        let token =
            jsonwebtoken::encode(&Header::default(), &claims, &self.key).map_err(storage)?;
        Ok(Login {
            token,
            user: user.to_owned(),
            expires_at,
        })
    }

    pub fn change_password(&self, user: &str, old: &str, new: &str) -> Result<(), ApiError> {
        password::check_length(new)?;
        let wrong = || ApiError::new(401, ErrorCode::Unauthorized, "wrong user or password");
        let account = self.get(user)?.ok_or_else(wrong)?;
        if !password::verify(old, &account.hash) {
            return Err(wrong());
        }
        let updated = Account {
            hash: password::hash(new)?,
            name: account.name,
        };
        self.put(user, &updated, false)
    }
}

fn check_user(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.len() > USER_ID_BYTES_MAX || user.chars().any(char::is_control) {
        return Err(ApiError::new(
            400,
            ErrorCode::BadRequest,
            format!("`user` must be 1..={USER_ID_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}
