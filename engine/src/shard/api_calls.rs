//! The HTTP API beside the WebSocket: room calls go to the room's home like WebSocket
//! requests and come back as a typed [`Reply`]; account calls run on the blocking pool.
//! Failed logins are limited per user here.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::tasks::spawn_task;
use super::Shard;
use crate::conn::Phase;
use crate::mesh::msg::{HomeOp, HomeReq, Origin, Reply};
use crate::wire::api::ApiCall;
use crate::wire::protocol::{self, ErrorCode};

impl Shard {
    /// Runs an HTTP API call.
    pub(super) fn on_api(&mut self, key: usize, call: ApiCall) {
        let deadline = Instant::now() + Duration::from_millis(self.cfg().handshake_timeout_ms);
        let entry = &mut self.conns[key];
        entry.phase = Phase::Api;
        entry.api_ok_status = call.ok_status();
        entry.close_deadline = Some(deadline);
        let origin = Origin {
            shard: self.id,
            conn: self.conn_ref(key),
            request: None,
            turn: 0,
        };
        let req = match call {
            ApiCall::Publish {
                room,
                from,
                body,
                client_msg_id,
            } => HomeReq {
                room,
                user: from,
                op: HomeOp::Send {
                    name: None,
                    body,
                    client_msg_id,
                    received_at: Instant::now(),
                },
            },
            ApiCall::History {
                room,
                identity,
                before_seq,
                limit,
            } => HomeReq {
                room,
                user: identity.user,
                op: HomeOp::History { before_seq, limit },
            },
            account_call => return self.on_account_call(key, account_call),
        };
        if let Err(e) = self.forward(origin, req) {
            let response = crate::wire::api::error_response(&e.into());
            self.respond_http(key, response);
        }
    }

    /// A home's reply to an API call, as an HTTP response: the status comes from the typed
    /// result, the body is the same JSON a WebSocket client would get.
    pub(super) fn api_reply(&mut self, key: usize, reply: Reply) {
        let response = match reply {
            Reply::Ok(json) => {
                crate::wire::api::json_response(self.conns[key].api_ok_status, &json)
            }
            Reply::Error { request, error } => {
                self.metrics.protocol_errors.inc();
                let json = protocol::error(request.as_deref(), &error);
                crate::wire::api::json_response(crate::wire::api::status_of(error.code), &json)
            }
        };
        self.respond_http(key, response);
    }

    fn on_account_call(&mut self, key: usize, call: ApiCall) {
        let Some(accounts) = self.instance.accounts.clone() else {
            return;
        };
        let login_user = match &call {
            ApiCall::Login { user, .. } | ApiCall::Password { user, .. } => Some(user.clone()),
            _ => None,
        };
        if let Some(user) = &login_user {
            if self.login_limiter.is_limited(user, Instant::now()) {
                let err = crate::wire::api::ApiError::new(
                    ErrorCode::RateLimited,
                    "too many failed attempts: wait a minute",
                );
                return self.respond_http(key, crate::wire::api::error_response(&err));
            }
        }
        let (me, conn, ok_status) = (self.me.clone(), self.conn_ref(key), call.ok_status());
        spawn_task(async move {
            let result = super::offload::off_shard(move || account_call(&accounts, call)).await;
            let Some(shard) = me.upgrade() else { return };
            let mut shard = shard.borrow_mut();
            let Some(key) = shard.live(conn) else { return };
            if let (Some(user), Err(e)) = (&login_user, &result) {
                if e.status == 401 {
                    shard.login_limiter.failed(user, Instant::now());
                }
            }
            let response = match result {
                Ok(body) => crate::wire::api::json_response(ok_status, body.to_string().as_bytes()),
                Err(e) => crate::wire::api::error_response(&e),
            };
            shard.respond_http(key, response);
        })
        .detach();
    }
}

/// One account call, on the blocking pool: the `ok` body or the error.
fn account_call(
    accounts: &crate::accounts::Accounts,
    call: ApiCall,
) -> Result<serde_json::Value, crate::wire::api::ApiError> {
    let result = match call {
        ApiCall::Register {
            user,
            password,
            name,
        } => accounts
            .register(&user, &password, name.as_deref())
            .map(|()| serde_json::json!({"op": "ok", "user": user})),
        ApiCall::Login { user, password } => accounts.login(&user, &password).map(|l| {
            serde_json::json!({"op": "ok", "token": l.token, "user": l.user, "expires_at": l.expires_at})
        }),
        ApiCall::Password {
            user,
            old_password,
            new_password,
        } => accounts
            .change_password(&user, &old_password, &new_password)
            .map(|()| serde_json::json!({"op": "ok"})),
        ApiCall::Publish { .. } | ApiCall::History { .. } => {
            unreachable!("room calls go to the room's home")
        }
    };
    result.map_err(crate::wire::api::ApiError::from)
}

/// Failed logins per user on this shard, in a sliding minute.
#[derive(Default)]
pub(super) struct LoginLimiter {
    failures: HashMap<String, (u32, Instant)>,
}

impl LoginLimiter {
    const FAILURES_PER_MINUTE_MAX: u32 = 5;
    const WINDOW: Duration = Duration::from_secs(60);
    /// Users tracked at most; past it the entries older than the window are forgotten.
    const USERS_MAX: usize = 100_000;

    fn is_limited(&self, user: &str, now: Instant) -> bool {
        self.failures.get(user).is_some_and(|(n, since)| {
            *n >= Self::FAILURES_PER_MINUTE_MAX && now - *since < Self::WINDOW
        })
    }

    fn failed(&mut self, user: &str, now: Instant) {
        if self.failures.len() >= Self::USERS_MAX {
            self.failures
                .retain(|_, (_, since)| now - *since < Self::WINDOW);
        }
        let entry = self.failures.entry(user.to_owned()).or_insert((0, now));
        if now - entry.1 >= Self::WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}
