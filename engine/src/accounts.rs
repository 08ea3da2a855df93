//! Optional accounts (`--accounts`), for deployments without an identity service:
//! register, log in (returns a JWT), change a password. Passwords are argon2id hashes in a
//! small redb file beside the store (`accounts.redb`).
//!
//! Every call here blocks (disk, argon2): the HTTP layer runs them on glommio's blocking
//! pool, never on a shard. Failed logins are rate-limited per shard by the caller.

#![forbid(unsafe_code)]

use std::path::Path;

use jsonwebtoken::{EncodingKey, Header};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::password;
use crate::wire::api::ApiError;
use crate::wire::auth::{is_valid_user_id, NAME_BYTES_MAX, USER_ID_BYTES_MAX};
use crate::wire::protocol::{ErrorCode, ProtoError};

/// user id → JSON `Account`.
const ACCOUNTS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("accounts");

#[derive(Serialize, Deserialize)]
struct Account {
    hash: String,
    name: Option<String>,
}

/// Why an account call failed. The HTTP layer answers it as an [`ApiError`] (`From` below);
/// the text of each variant is what the client reads.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("`user` must be 1..={USER_ID_BYTES_MAX} bytes")]
    BadUser,
    #[error("`name` must be 1..={NAME_BYTES_MAX} bytes")]
    BadName,
    /// A password the length rule refuses (`bad_request`), or one argon2 could not hash
    /// (`internal`): the code says which.
    #[error("{}", .0.message)]
    Password(ProtoError),
    #[error("user `{0}` exists")]
    Exists(String),
    /// No such user, or the wrong password: the client is not told which.
    #[error("wrong user or password")]
    WrongCredentials,
    /// The redb file or an account record in it failed; the cause is logged, not sent.
    #[error("accounts store failed")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("could not sign the token")]
    Token(#[source] jsonwebtoken::errors::Error),
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> ApiError {
        let code = match &e {
            AccountError::BadUser | AccountError::BadName => ErrorCode::BadRequest,
            AccountError::Password(error) => return ApiError::from(error.clone()),
            AccountError::Exists(_) => ErrorCode::UserExists,
            AccountError::WrongCredentials => ErrorCode::Unauthorized,
            AccountError::Store(_) | AccountError::Token(_) => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

/// A failure of the store, logged here with its cause (the client sees only that it failed).
fn storage(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> AccountError {
    let e = e.into();
    tracing::error!(error = %e, "accounts store");
    AccountError::Store(e)
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
    pub fn open(path: &Path, jwt_secret: &str, token_ttl_s: u64) -> Result<Accounts, AccountError> {
        let db = redb::Builder::new()
            .set_cache_size(1 << 20)
            .create(path)
            .map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(ACCOUNTS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(Accounts {
            db,
            key: EncodingKey::from_secret(jwt_secret.as_bytes()),
            token_ttl_s,
        })
    }

    fn get(&self, user: &str) -> Result<Option<Account>, AccountError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(ACCOUNTS).map_err(storage)?;
        let Some(raw) = table.get(user).map_err(storage)? else {
            return Ok(None);
        };
        serde_json::from_slice(raw.value())
            .map(Some)
            .map_err(storage)
    }

    fn put(&self, user: &str, account: &Account, must_be_new: bool) -> Result<(), AccountError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(ACCOUNTS).map_err(storage)?;
            if must_be_new && table.get(user).map_err(storage)?.is_some() {
                return Err(AccountError::Exists(user.to_owned()));
            }
            let raw = serde_json::to_vec(account).map_err(storage)?;
            table.insert(user, raw.as_slice()).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    pub fn register(&self, user: &str, pass: &str, name: Option<&str>) -> Result<(), AccountError> {
        if !is_valid_user_id(user) {
            return Err(AccountError::BadUser);
        }
        password::check_length(pass).map_err(AccountError::Password)?;
        if name.is_some_and(|n| n.is_empty() || n.len() > NAME_BYTES_MAX) {
            return Err(AccountError::BadName);
        }
        let account = Account {
            hash: password::hash(pass).map_err(AccountError::Password)?,
            name: name.map(str::to_owned),
        };
        self.put(user, &account, true)
    }

    /// Checks the password and mints a token. [`AccountError::WrongCredentials`] on a wrong
    /// user or password.
    pub fn login(&self, user: &str, pass: &str) -> Result<Login, AccountError> {
        let account = self.check(user, pass)?;
        let expires_at = now_ms() / 1000 + self.token_ttl_s;
        let claims = Claims {
            sub: user,
            name: account.name.as_deref(),
            exp: expires_at,
        };
        let token = jsonwebtoken::encode(&Header::default(), &claims, &self.key)
            .map_err(AccountError::Token)?;
        Ok(Login {
            token,
            user: user.to_owned(),
            expires_at,
        })
    }

    pub fn change_password(&self, user: &str, old: &str, new: &str) -> Result<(), AccountError> {
        password::check_length(new).map_err(AccountError::Password)?;
        let account = self.check(user, old)?;
        let updated = Account {
            hash: password::hash(new).map_err(AccountError::Password)?,
            name: account.name,
        };
        self.put(user, &updated, false)
    }

    /// The account of `user` if `pass` is its password.
    fn check(&self, user: &str, pass: &str) -> Result<Account, AccountError> {
        let account = self.get(user)?.ok_or(AccountError::WrongCredentials)?;
        if !password::verify(pass, &account.hash) {
            return Err(AccountError::WrongCredentials);
        }
        Ok(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh accounts file in the system's temporary directory, removed on drop.
    struct TempAccounts {
        path: std::path::PathBuf,
        accounts: Accounts,
    }

    impl TempAccounts {
        fn new(name: &str) -> TempAccounts {
            let path = std::env::temp_dir()
                .join(format!("sokdo-accounts-{}-{name}.redb", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let accounts = Accounts::open(&path, "secret", 60).unwrap();
            TempAccounts { path, accounts }
        }
    }

    impl Drop for TempAccounts {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn answer(e: AccountError) -> (u16, ErrorCode, String) {
        let api = ApiError::from(e);
        (api.status, api.error.code, api.error.message)
    }

    #[test]
    fn each_error_answers_its_status_and_code() {
        let exists = answer(AccountError::Exists("mina".into()));
        assert_eq!((exists.0, exists.1), (409, ErrorCode::UserExists));
        assert!(exists.2.contains("mina"), "{}", exists.2);
        assert_eq!(answer(AccountError::BadUser).0, 400);
        assert_eq!(answer(AccountError::BadName).1, ErrorCode::BadRequest);
        assert_eq!(
            answer(AccountError::WrongCredentials).1,
            ErrorCode::Unauthorized
        );
        let short = ProtoError::new(ErrorCode::BadRequest, "`password` must be 1..=128 bytes");
        assert_eq!(
            answer(AccountError::Password(short)),
            (
                400,
                ErrorCode::BadRequest,
                "`password` must be 1..=128 bytes".into()
            )
        );
        let store = answer(AccountError::Store("disk on fire".into()));
        assert_eq!((store.0, store.1), (500, ErrorCode::Internal));
        assert!(
            !store.2.contains("disk on fire"),
            "the cause leaked: {}",
            store.2
        );
    }

    #[test]
    fn a_taken_user_id_is_refused_and_keeps_its_account() {
        let t = TempAccounts::new("taken");
        let first = Account {
            hash: "first".into(),
            name: None,
        };
        let second = Account {
            hash: "second".into(),
            name: None,
        };
        t.accounts.put("mina", &first, true).unwrap();
        assert!(matches!(
            t.accounts.put("mina", &second, true),
            Err(AccountError::Exists(user)) if user == "mina"
        ));
        assert_eq!(t.accounts.get("mina").unwrap().unwrap().hash, "first");
        t.accounts.put("mina", &second, false).unwrap();
        assert_eq!(t.accounts.get("mina").unwrap().unwrap().hash, "second");
    }

    #[test]
    fn bad_users_and_names_are_refused_before_any_hashing() {
        let t = TempAccounts::new("bad");
        let long = "a".repeat(USER_ID_BYTES_MAX + 1);
        for user in ["", "tab\there", long.as_str()] {
            assert!(matches!(
                t.accounts.register(user, "pass", None),
                Err(AccountError::BadUser)
            ));
        }
        assert!(matches!(
            t.accounts.register("mina", "", None),
            Err(AccountError::Password(e)) if e.code == ErrorCode::BadRequest
        ));
        assert!(matches!(
            t.accounts.register("mina", "pass", Some("")),
            Err(AccountError::BadName)
        ));
        assert!(matches!(
            t.accounts.login("nobody", "pass"),
            Err(AccountError::WrongCredentials)
        ));
    }

    #[test]
    fn open_reports_a_store_error() {
        let path = std::env::temp_dir().join("sokdo-no-such-dir/accounts.redb");
        assert!(matches!(
            Accounts::open(&path, "secret", 60),
            Err(AccountError::Store(_))
        ));
    }
}
