//! What comes back from the persistence threads: durable acks and store reads, each
//! finishing the request that waits under its ticket.
#![forbid(unsafe_code)]

use sokdo_persistence::{Completion, StoredMessage};

use super::requests::{no_message, HistoryOk};
use super::{refusal, reply_err, reply_ok, Homes, Now, Waiting};
use crate::mesh::msg::Outgoing;
use crate::persist::to_msg;
use crate::wire::protocol::{ErrorCode, Msg, ProtoError};

impl Homes {
    /// A completion from the persistence threads.
    pub fn on_completion(&mut self, completion: Completion, now: Now, out: &mut Outgoing) {
        match completion {
            Completion::Durable(tickets) => {
                for ticket in tickets {
                    // Tickets of other kinds never come back durable; a token not waiting
                    // is impossible (each is answered once).
                    match self.waiting.remove(&ticket.token) {
                        Some(Waiting::Ack(send)) => self.publish_send(out, send),
                        other => debug_assert!(other.is_none(), "a durable ticket for a read"),
                    }
                }
            }
            Completion::Failed(tickets, error) => {
                for ticket in tickets {
                    match self.waiting.remove(&ticket.token) {
                        Some(Waiting::Ack(send)) => {
                            self.abandon_send(out, send, refusal(error.clone()));
                        }
                        other => debug_assert!(other.is_none(), "a failed ticket for a read"),
                    }
                }
            }
            Completion::Read { ticket, result } => {
                let Some(waiting) = self.waiting.remove(&ticket.token) else {
                    debug_assert!(false, "a read completed twice");
                    return;
                };
                match result {
                    Ok(stored) => self.read_done(waiting, stored, now, out),
                    Err(e) => read_failed(waiting, &e.to_string(), out),
                }
            }
        }
    }

    fn read_done(
        &mut self,
        waiting: Waiting,
        stored: Vec<StoredMessage>,
        now: Now,
        out: &mut Outgoing,
    ) {
        let stored: Vec<Msg> = stored.into_iter().map(to_msg).collect();
        match waiting {
            Waiting::Join(joining) => self.replay_page(out, joining, stored, now),
            Waiting::History { origin, room } => {
                let messages: Vec<&Msg> = stored.iter().collect();
                let ok = HistoryOk {
                    room: &room,
                    messages: &messages,
                };
                reply_ok(out, &origin, ok);
            }
            Waiting::Delete {
                origin,
                room,
                user,
                seq,
            } => {
                let result = match stored.iter().find(|m| m.seq == seq) {
                    Some(m) => {
                        let author = m.from.clone();
                        self.finish_delete(out, &origin, (&room, seq), &user, &author, now)
                    }
                    None => Err(no_message(&room, seq)),
                };
                if let Err(e) = result {
                    reply_err(out, &origin, e);
                }
            }
            Waiting::Ack(_) => debug_assert!(false, "a read completed an ack"),
        }
    }
}

fn read_failed(waiting: Waiting, error: &str, out: &mut Outgoing) {
    tracing::warn!(error, "store read failed");
    let origin = match waiting {
        Waiting::Join(joining) => joining.origin,
        Waiting::History { origin, .. } | Waiting::Delete { origin, .. } => origin,
        Waiting::Ack(send) => {
            debug_assert!(false, "a read completed an ack");
            send.origin
        }
    };
    let e = ProtoError::new(ErrorCode::Unavailable, "storage read failed: retry");
    reply_err(out, &origin, e);
}
