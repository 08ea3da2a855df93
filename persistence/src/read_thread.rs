//! The `sokdo-read` thread: history reads, merged from the sink and the backlog.
//!
//! A record may be in the log but not yet in the sink; a read must still see it. The thread
//! copies the room's backlog records *before* querying the sink: a record confirmed in between
//! is then in the sink's answer, and one not yet confirmed is in the copy — never in neither.
//! Reads are never done on a shard thread; the result goes back as [`Completion::Read`].
//!
//! While the sink is down (`Stats::sink_up` false) the sink is not asked, so no read waits for
//! its timeout: a read the backlog alone can answer is answered from it, any other gets
//! [`Error::SinkDown`] at once (the engine answers `unavailable`).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::queue::Receiver;

use crate::contract::{Completion, Error, ReadRequest, Record, StoredMessage, Ticket};
use crate::sink::SinkReader;
use crate::state::Pipeline;

pub(crate) enum ReadCmd {
    Read { req: ReadRequest, ticket: Ticket },
    Shutdown,
}

pub(crate) fn run(mut reader: Box<dyn SinkReader>, rx: Receiver<ReadCmd>, pipeline: Arc<Pipeline>) {
    while let Ok(ReadCmd::Read { req, ticket }) = rx.recv() {
        let pending = pipeline.backlog.for_room(req.room());
        let result = if pipeline.sink_up.load(Relaxed) {
            reader
                .read(&req)
                .map(|stored| merge(&req, stored, &pending))
        } else {
            from_backlog_alone(&req, &pending).ok_or_else(|| {
                Error::SinkDown("this read needs messages only the sink holds".to_string())
            })
        };
        pipeline.sinks[usize::from(ticket.shard)].complete(Completion::Read { ticket, result });
    }
}

/// The answer from the backlog alone, when it provably holds every message the request
/// needs. The backlog is a suffix of the log and a room's messages are logged in seq order,
/// so it holds all of the room's messages from its lowest seq on.
pub fn from_backlog_alone(
    req: &ReadRequest,
    pending: &[Arc<Record>],
) -> Option<Vec<StoredMessage>> {
    let lowest = pending
        .iter()
        .filter_map(|r| match r.as_ref() {
            Record::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .min()?;
    let merged = merge(req, Vec::new(), pending);
    let covered = lowest == 1
        || match req {
            ReadRequest::After { after_seq, .. } => lowest <= after_seq.saturating_add(1),
            ReadRequest::Before { .. } => merged.len() == req.limit(),
        };
    covered.then_some(merged)
}

/// Combines the sink's answer with the room's unconfirmed records (in lsn order) and applies
/// the request's range and limit.
pub fn merge(
    req: &ReadRequest,
    stored: Vec<StoredMessage>,
    pending: &[Arc<Record>],
) -> Vec<StoredMessage> {
    let mut by_seq: BTreeMap<u64, StoredMessage> = stored.into_iter().map(|m| (m.seq, m)).collect();
    for rec in pending {
        match rec.as_ref() {
            Record::Message {
                room,
                seq,
                msg_id,
                from,
                name,
                body,
                ts_ms,
                ..
            } if req.admits(*seq) => {
                by_seq.entry(*seq).or_insert_with(|| StoredMessage {
                    room: room.clone(),
                    seq: *seq,
                    msg_id: msg_id.clone(),
                    from: from.clone(),
                    name: name.clone(),
                    body: Some(body.clone()),
                    ts_ms: *ts_ms,
                    deleted: false,
                });
            }
            Record::Deleted { seq, .. } => {
                if let Some(m) = by_seq.get_mut(seq) {
                    m.body = None;
                    m.deleted = true;
                }
            }
            _ => {}
        }
    }
    let limit = req.limit();
    let all = by_seq.into_values();
    match req {
        ReadRequest::Before { .. } => {
            let mut newest: Vec<_> = all.rev().take(limit).collect();
            newest.reverse();
            newest
        }
        ReadRequest::After { .. } => all.take(limit).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> StoredMessage {
        StoredMessage {
            room: "r".into(),
            seq,
            msg_id: format!("m{seq}"),
            from: "a".into(),
            name: None,
            body: Some(format!("b{seq}")),
            ts_ms: seq,
            deleted: false,
        }
    }

    fn rec(seq: u64) -> Arc<Record> {
        Arc::new(Record::Message {
            room: "r".into(),
            seq,
            msg_id: format!("m{seq}"),
            from: "a".into(),
            name: None,
            body: format!("b{seq}"),
            ts_ms: seq,
            client_msg_id: None,
        })
    }

    #[test]
    fn before_takes_the_newest_across_sink_and_backlog() {
        let req = ReadRequest::Before {
            room: "r".into(),
            before_seq: Some(7),
            limit: 3,
        };
        let del = Arc::new(Record::Deleted {
            room: "r".into(),
            seq: 4,
            by: "a".into(),
            ts_ms: 9,
        });
        let out = merge(
            &req,
            vec![msg(3), msg(4)],
            &[rec(4), rec(5), rec(6), rec(7), del],
        );
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5, 6]);
        assert!(out[0].deleted && out[0].body.is_none());
    }

    #[test]
    fn after_takes_the_oldest_above_the_mark() {
        let req = ReadRequest::After {
            room: "r".into(),
            after_seq: 2,
            limit: 2,
        };
        let out = merge(&req, vec![msg(3)], &[rec(2), rec(4), rec(5)]);
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn the_backlog_alone_answers_only_what_it_covers() {
        let pending = [rec(4), rec(5), rec(6)];
        let after = |after_seq| ReadRequest::After {
            room: "r".into(),
            after_seq,
            limit: 10,
        };
        let seqs =
            |v: Option<Vec<StoredMessage>>| v.map(|v| v.iter().map(|m| m.seq).collect::<Vec<_>>());
        assert_eq!(
            seqs(from_backlog_alone(&after(3), &pending)),
            Some(vec![4, 5, 6])
        );
        assert_eq!(seqs(from_backlog_alone(&after(9), &pending)), Some(vec![]));
        assert_eq!(
            from_backlog_alone(&after(2), &pending),
            None,
            "seq 3 is in the sink"
        );
        let before = |limit| ReadRequest::Before {
            room: "r".into(),
            before_seq: None,
            limit,
        };
        assert_eq!(
            seqs(from_backlog_alone(&before(2), &pending)),
            Some(vec![5, 6])
        );
        assert_eq!(
            from_backlog_alone(&before(4), &pending),
            None,
            "seq 3 is in the sink"
        );
        let whole_room = [rec(1), rec(2)];
        assert_eq!(
            seqs(from_backlog_alone(&before(5), &whole_room)),
            Some(vec![1, 2])
        );
        assert_eq!(
            from_backlog_alone(&after(0), &[]),
            None,
            "nothing known: ask the sink"
        );
    }
}
