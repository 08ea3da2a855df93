//! The HTTP API beside the WebSocket: room calls go to the room's home like WebSocket
//! requests and come back as a typed [`Reply`]; account calls run on the blocking pool.
//! Failed logins are limited here per account and client address, and per address: an
//! attacker's failures from one address never lock the owner out from another.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::tasks::spawn_task;
use super::Shard;
use crate::conn::Phase;
use crate::mesh::msg::{HomeOp, HomeReq, Origin, Reply};
use crate::throttle::Failures;
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
        let peer = self.conns[key].peer;
        if let Some(user) = &login_user {
            if let Some(wait) = self.login_limiter.retry_after(user, peer, Instant::now()) {
                self.metrics.login_refusals.inc();
                let err = crate::wire::api::ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "too many failed attempts: wait {} s",
                        wait.as_secs_f64().ceil()
                    ),
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
                    shard.login_limiter.failed(user, peer, Instant::now());
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

/// Failed logins on this shard, per (account, client address) and per address, in a
/// window (`--login-failures-max`, `--login-failures-per-ip-max`,
/// `--auth-failure-window-ms`). Not per account alone: that would let anyone lock any
/// account's owner out by failing on purpose.
pub(super) struct LoginLimiter {
    by_user_ip: Failures<(String, Option<IpAddr>)>,
    by_ip: Failures<IpAddr>,
}

impl LoginLimiter {
    /// Keys tracked at most by each count.
    const KEYS_MAX: usize = 100_000;

    pub(super) fn new(cfg: &crate::config::Config) -> LoginLimiter {
        let window = Duration::from_millis(cfg.auth_failure_window_ms);
        LoginLimiter {
            by_user_ip: Failures::new(cfg.login_failures_max, window, Self::KEYS_MAX),
            by_ip: Failures::new(cfg.login_failures_per_ip_max, window, Self::KEYS_MAX),
        }
    }

    /// How long `user` from `peer` must wait, if it must.
    fn retry_after(&self, user: &str, peer: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let key = (user.to_owned(), peer);
        self.by_user_ip
            .retry_after(&key, now)
            .or_else(|| peer.and_then(|ip| self.by_ip.retry_after(&ip, now)))
    }

    fn failed(&mut self, user: &str, peer: Option<IpAddr>, now: Instant) {
        self.by_user_ip.failed((user.to_owned(), peer), now);
        if let Some(ip) = peer {
            self.by_ip.failed(ip, now);
        }
    }
}
