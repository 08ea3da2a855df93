//! Acknowledged appends/s and ack latency, `sync` vs `async`, with the group-commit sizes that
//! result. Appenders are threads standing in for shards; an "ack" is the `Durable` completion.
//!
//! Besides criterion's own report, each configuration does one fixed run of
//! `SUMMARY_APPENDS` appends as fast as the appenders can push (open loop: saturation
//! throughput, latency is mostly queueing) and prints appends/s, ack p50/p99 and records per
//! group commit; then a closed loop (`CLOSED`) where each appender waits for its ack before the
//! next append, which is what a client waiting for `ok` sees.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sokdo_persistence::{
    Completion, CompletionSink, Config, Durability, Handle, Persistence, Record, SubmitError,
    Ticket,
};

const SUMMARY_APPENDS: u64 = 20_000;
const CLOSED_LOOP_APPENDS: u64 = 4_000;

/// Tokens carry the send time (ns since `base`), so latency needs no lookup.
struct Acks {
    base: Instant,
    done: AtomicU64,
    latencies_ns: Mutex<Vec<u64>>,
}

impl CompletionSink for Acks {
    fn complete(&self, c: Completion) {
        if let Completion::Durable(tickets) = c {
            let now = self.base.elapsed().as_nanos() as u64;
            let mut l = self.latencies_ns.lock().unwrap();
            l.extend(tickets.iter().map(|t| now - t.token));
            self.done.fetch_add(tickets.len() as u64, Relaxed);
        }
    }
}

fn message(seq: u64) -> Record {
    Record::Message {
        room: format!("room{}", seq % 16),
        seq,
        msg_id: format!("{seq:016x}"),
        from: "bench-user".into(),
        name: None,
        body: "a chat message of a typical length, about eighty bytes long, in plain text.".into(),
        ts_ms: seq,
        client_msg_id: None,
    }
}

/// `n` appends spread over `threads`; returns when every one is acknowledged.
fn run(h: &Handle, acks: &Acks, threads: u64, n: u64) -> Duration {
    let target = acks.done.load(Relaxed) + n;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let h = h.clone();
            s.spawn(move || {
                for i in 0..n / threads {
                    let token = acks.base.elapsed().as_nanos() as u64;
                    let mut rec = message(t * n + i);
                    loop {
                        match h.append(rec, Some(Ticket { shard: 0, token })) {
                            Ok(()) => break,
                            Err(SubmitError::Full) => {
                                rec = message(t * n + i);
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    while acks.done.load(Relaxed) < target - (n % threads) {
        std::thread::yield_now();
    }
    start.elapsed()
}

fn open(durability: Durability) -> (tempfile::TempDir, Persistence, Arc<Acks>) {
    let dir = tempfile::tempdir().unwrap();
    let acks = Arc::new(Acks {
        base: Instant::now(),
        done: AtomicU64::new(0),
        latencies_ns: Mutex::default(),
    });
    let cfg = Config {
        data_dir: dir.path().to_path_buf(),
        durability,
        ..Config::default()
    };
    let (p, _) = Persistence::open(cfg, vec![acks.clone() as Arc<dyn CompletionSink>]).unwrap();
    (dir, p, acks)
}

fn summary(durability: Durability, threads: u64) {
    let (_dir, p, acks) = open(durability);
    let h = p.handle();
    let took = run(&h, &acks, threads, SUMMARY_APPENDS);
    let mut l = std::mem::take(&mut *acks.latencies_ns.lock().unwrap());
    l.sort_unstable();
    let pct = |q: f64| l[((l.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    let st = h.stats();
    println!(
        "SUMMARY durability={durability:?} appenders={threads}: {:.0} acked appends/s, ack p50 {:.0} µs, p99 {:.0} µs, \
         {:.1} records/group commit, {} fdatasyncs for {} records",
        SUMMARY_APPENDS as f64 / took.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        st.records_appended as f64 / st.group_commits.max(1) as f64,
        st.fdatasyncs,
        st.records_appended,
    );
    p.shutdown().unwrap();
}

/// Closed loop: each appender waits for its ack before the next append, like a client waiting
/// for `ok`. Returns (acked appends/s, p50 µs, p99 µs, records per group commit).
fn closed_loop(durability: Durability, threads: u64) {
    let dir = tempfile::tempdir().unwrap();
    let base = Instant::now();
    let acks: Vec<Arc<Acks>> = (0..threads)
        .map(|_| {
            Arc::new(Acks {
                base,
                done: AtomicU64::new(0),
                latencies_ns: Mutex::default(),
            })
        })
        .collect();
    let cfg = Config {
        data_dir: dir.path().to_path_buf(),
        durability,
        ..Config::default()
    };
    let sinks = acks
        .iter()
        .map(|a| a.clone() as Arc<dyn CompletionSink>)
        .collect();
    let (p, _) = Persistence::open(cfg, sinks).unwrap();
    let per_thread = CLOSED_LOOP_APPENDS / threads;
    let start = Instant::now();
    std::thread::scope(|s| {
        for (t, a) in acks.iter().enumerate() {
            let h = p.handle();
            s.spawn(move || {
                for i in 0..per_thread {
                    let token = a.base.elapsed().as_nanos() as u64;
                    h.append(
                        message(i),
                        Some(Ticket {
                            shard: t as u16,
                            token,
                        }),
                    )
                    .unwrap();
                    while a.done.load(Relaxed) <= i {
                        std::thread::yield_now();
                    }
                }
            });
        }
    });
    let took = start.elapsed();
    let mut l: Vec<u64> = acks
        .iter()
        .flat_map(|a| std::mem::take(&mut *a.latencies_ns.lock().unwrap()))
        .collect();
    l.sort_unstable();
    let pct = |q: f64| l[((l.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    let st = p.handle().stats();
    println!(
        "CLOSED durability={durability:?} appenders={threads}: {:.0} acked appends/s, ack p50 {:.0} µs, p99 {:.0} µs, \
         {:.2} records/group commit",
        (per_thread * threads) as f64 / took.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        st.records_appended as f64 / st.group_commits.max(1) as f64,
    );
    p.shutdown().unwrap();
}

fn bench(c: &mut Criterion) {
    for durability in [Durability::Sync, Durability::Async] {
        for threads in [1u64, 4, 16, 64] {
            closed_loop(durability, threads);
        }
    }
    let mut g = c.benchmark_group("wal_acked_appends");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for durability in [Durability::Sync, Durability::Async] {
        for threads in [1u64, 4, 16] {
            summary(durability, threads);
            let (_dir, p, acks) = open(durability);
            let h = p.handle();
            g.throughput(Throughput::Elements(1));
            g.bench_with_input(
                BenchmarkId::new(format!("{durability:?}"), threads),
                &threads,
                |b, &t| b.iter_custom(|iters| run(&h, &acks, t, iters.max(t))),
            );
            p.shutdown().unwrap();
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
