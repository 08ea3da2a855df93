//! Shared test helpers: a completion collector, condition waits with deadlines, builders.
#![allow(dead_code)] // each test binary uses a different subset

pub mod fault_proxy;
pub mod mongo_double;
pub mod mongo_server;
pub mod secantus;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sokdo_persistence::{
    Completion, CompletionSink, Config, Durability, Handle, ReadRequest, Record, StoredMessage,
    Ticket,
};

/// Polls `cond` with a short backoff until it holds; fails the test after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Records every completion it receives.
#[derive(Default)]
pub struct Collector {
    pub durable: Mutex<Vec<Ticket>>,
    /// Tickets whose records the log could not write.
    pub failed: Mutex<Vec<Ticket>>,
    pub reads: Mutex<HashMap<u64, Result<Vec<StoredMessage>, String>>>,
}

impl CompletionSink for Collector {
    fn complete(&self, c: Completion) {
        match c {
            Completion::Durable(t) => self.durable.lock().unwrap().extend(t),
            Completion::Failed(t, _) => self.failed.lock().unwrap().extend(t),
            Completion::Read { ticket, result } => {
                self.reads
                    .lock()
                    .unwrap()
                    .insert(ticket.token, result.map_err(|e| e.to_string()));
            }
        }
    }
}

impl Collector {
    pub fn durable_count(&self) -> usize {
        self.durable.lock().unwrap().len()
    }

    /// Sends `req` and waits for its answer.
    pub fn read(
        &self,
        handle: &Handle,
        shard: u16,
        token: u64,
        req: ReadRequest,
    ) -> Vec<StoredMessage> {
        handle
            .read(req, Ticket { shard, token })
            .expect("read accepted");
        wait_for("read completion", Duration::from_secs(20), || {
            self.reads.lock().unwrap().contains_key(&token)
        });
        self.reads
            .lock()
            .unwrap()
            .remove(&token)
            .unwrap()
            .expect("read succeeded")
    }
}

pub fn config(dir: &Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        durability: Durability::Sync,
        wal_bytes_max: 1024 * 1024,
        wal_segment_bytes: 16 * 1024,
        batch_messages_max: 100,
        batch_age_ms: 5,
        sink_idle_lag_ms: 1000,
        mongodb_uri: None,
        mongodb_database: "sokdo_test".to_string(),
        wal_retry_backoff_max_ms: 1000,
        retry_keys_max: 4096,
    }
}

pub fn message(room: &str, seq: u64) -> Record {
    Record::Message {
        room: room.to_string(),
        seq,
        msg_id: format!("m-{room}-{seq}"),
        from: format!("user{}", seq % 3),
        name: seq.is_multiple_of(2).then(|| "Name".to_string()),
        body: format!("body {seq} of {room}"),
        ts_ms: 1_700_000_000_000 + seq,
        client_msg_id: None,
    }
}

pub fn sinks(c: &Arc<Collector>, n: usize) -> Vec<Arc<dyn CompletionSink>> {
    (0..n)
        .map(|_| c.clone() as Arc<dyn CompletionSink>)
        .collect()
}

pub fn seqs(msgs: &[StoredMessage]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}
