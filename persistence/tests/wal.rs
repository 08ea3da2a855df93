//! The log: torn and corrupt tails, replay as an exact prefix, `Full`, group commit.

mod support;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sokdo_persistence::Wal;
use sokdo_persistence::{encode_frame, Damage};
use sokdo_persistence::{Handle, Persistence, ReadRequest, Record, SubmitError, Ticket};
use support::{config, message, seqs, sinks, wait_for, Collector};

const SEGMENT_BYTES: u64 = 4096;

/// Appends `records` in groups of `group`, returning each frame's size.
fn write(wal: &mut Wal, records: &[Record], group: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    for chunk in records.chunks(group.max(1)) {
        let mut buf = Vec::new();
        for (i, rec) in chunk.iter().enumerate() {
            sizes.push(encode_frame(rec, wal.next_lsn() + i as u64, &mut buf).unwrap());
        }
        wal.append(&buf, chunk.len() as u64, true).unwrap();
    }
    sizes
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn records(n: u64) -> Vec<Record> {
    (1..=n).map(|s| message("room", s)).collect()
}

#[test]
fn a_torn_tail_is_truncated_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, replay) = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
    assert!(replay.records.is_empty());
    let input = records(100);
    let sizes = write(&mut wal, &input, 7);
    let files = segment_files(dir.path());
    assert!(
        files.len() > 2,
        "the test needs several segments, got {}",
        files.len()
    );
    drop(wal);

    // Cut the last frame of the last segment in half.
    let last = files.last().unwrap();
    let len = fs::metadata(last).unwrap().len();
    let cut = (sizes[99] / 2) as u64;
    fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - cut)
        .unwrap();

    let (mut wal, replay) = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(replay.damage, Some(Damage::TornPayload));
    assert_eq!(replay.records.len(), 99);
    assert_eq!(
        replay
            .records
            .iter()
            .map(|(_, r)| r.clone())
            .collect::<Vec<_>>(),
        input[..99]
    );
    assert_eq!(replay.truncated_bytes, sizes[99] as u64 - cut);
    assert_eq!(wal.next_lsn(), 100);

    // The log continues where the good prefix ended, and replays cleanly.
    write(&mut wal, &records(1)[..], 1);
    drop(wal);
    let (_, replay) = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(replay.damage, None);
    assert_eq!(replay.records.len(), 100);
    assert_eq!(replay.records.last().unwrap().0, 100);
}

#[test]
fn a_flipped_byte_stops_replay_there_and_drops_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
    write(&mut wal, &records(100), 5);
    drop(wal);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let victim = &files[1];
    let first_lsn: u64 = victim
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut bytes = fs::read(victim).unwrap();
    bytes[20] ^= 0x40; // inside the first frame's payload
    fs::write(victim, &bytes).unwrap();

    let (wal, replay) = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(replay.damage, Some(Damage::ChecksumMismatch));
    assert_eq!(
        replay.records.len() as u64,
        first_lsn - 1,
        "replay keeps exactly the frames before the flip"
    );
    assert_eq!(replay.segments_dropped, files.len() - 2);
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert_eq!(fs::metadata(victim).unwrap().len(), 0);
    assert_eq!(wal.next_lsn(), first_lsn);
}

#[test]
fn trim_deletes_only_whole_confirmed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
    write(&mut wal, &records(100), 5);
    let before = segment_files(dir.path());
    let second_first: u64 = before[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Confirming everything but the last record of segment 0 frees nothing.
    assert_eq!(wal.trim(second_first - 2).unwrap(), 0);
    assert!(wal.trim(second_first - 1).unwrap() > 0);
    assert_eq!(segment_files(dir.path()), before[1..]);
    // Everything confirmed: all but the live segment go.
    wal.trim(u64::MAX - 1).unwrap();
    assert_eq!(segment_files(dir.path()), before[before.len() - 1..]);
}

fn arb_records() -> impl Strategy<Value = Vec<Record>> {
    let rec =
        ("[a-c]{1,3}", 1u64..1000, "\\PC{0,200}").prop_map(|(room, seq, body)| Record::Message {
            room,
            seq,
            msg_id: format!("id{seq}"),
            from: "u".into(),
            name: None,
            body,
            ts_ms: seq,
            client_msg_id: None,
        });
    proptest::collection::vec(rec, 1..80)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn replay_after_a_random_cut_is_exactly_a_prefix(
        input in arb_records(), group in 1usize..10, cut in any::<prop::sample::Index>()
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
        let sizes = write(&mut wal, &input, group);
        drop(wal);
        // Cut the byte stream of all segments at one point: truncate that segment, delete later.
        let files = segment_files(dir.path());
        let lens: Vec<u64> = files.iter().map(|f| fs::metadata(f).unwrap().len()).collect();
        let total: u64 = lens.iter().sum();
        let mut at = cut.index(total as usize + 1) as u64;
        let mut kept_bytes = 0u64;
        for (f, len) in files.iter().zip(&lens) {
            if at >= *len {
                at -= len;
                kept_bytes += len;
            } else {
                fs::OpenOptions::new().write(true).open(f).unwrap().set_len(at).unwrap();
                kept_bytes += at;
                for later in files.iter().skip_while(|g| *g != f).skip(1) {
                    fs::remove_file(later).unwrap();
                }
                break;
            }
        }
        // Frames never straddle segments, so the survivors are those ending within kept bytes.
        let mut end = 0u64;
        let expected = sizes.iter().take_while(|s| { end += **s as u64; end <= kept_bytes }).count();
        let (_, replay) = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
        prop_assert_eq!(replay.records.len(), expected);
        let got: Vec<Record> = replay.records.into_iter().map(|(_, r)| r).collect();
        prop_assert_eq!(&got[..], &input[..expected]);
    }
}

/// Appends until the log refuses, waiting for each round's writes to land (reservations are
/// upper bounds, returned once the frames are written), and again until a refill accepts
/// nothing. Returns how many were accepted, every one of them durable.
fn fill_until_full(h: &Handle, collector: &Collector) -> u64 {
    let mut accepted = 0u64;
    for round in 0..100 {
        let before = accepted;
        for seq in accepted + 1..=accepted + 10_000 {
            match h.append(
                message("r", seq),
                Some(Ticket {
                    shard: 0,
                    token: seq,
                }),
            ) {
                Ok(()) => accepted += 1,
                Err(SubmitError::Full) => break,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(accepted < before + 10_000, "the log never filled");
        wait_for("durable tickets", Duration::from_secs(20), || {
            collector.durable_count() as u64 == accepted
        });
        if accepted == before {
            assert!(round > 0);
            break;
        }
    }
    accepted
}

#[test]
fn a_full_log_refuses_appends_and_loses_nothing_it_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let mut cfg = config(dir.path());
    cfg.wal_segment_bytes = 4096;
    cfg.wal_bytes_max = 2 * 4096;
    // The sink never takes a batch while running: nothing is confirmed, so the log must fill.
    cfg.batch_messages_max = 1_000_000;
    cfg.batch_age_ms = 3_600_000;
    let (p, _) = Persistence::open(cfg.clone(), sinks(&collector, 1)).unwrap();
    let h = p.handle();
    let accepted = fill_until_full(&h, &collector);
    assert!(accepted > 10, "only {accepted} fit");
    assert_eq!(
        h.append(message("r", accepted + 1), None),
        Err(SubmitError::Full),
        "still full"
    );
    let stats = h.stats();
    assert!(
        stats.wal_bytes <= 2 * 4096 && stats.wal_bytes > 4096,
        "wal_bytes {}",
        stats.wal_bytes
    );
    p.shutdown().unwrap();

    // Reopen: every accepted message is there, in order, once; seqs continue after them.
    cfg.batch_messages_max = 100;
    cfg.batch_age_ms = 5;
    let (p, rooms) = Persistence::open(cfg, sinks(&collector, 1)).unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].last_seq, accepted);
    let got = collector.read(
        &p.handle(),
        0,
        1,
        ReadRequest::After {
            room: "r".into(),
            after_seq: 0,
            limit: 1000,
        },
    );
    assert_eq!(seqs(&got), (1..=accepted).collect::<Vec<_>>());
    // With the sink draining again, the log has room again.
    let h = p.handle();
    wait_for("room in the log again", Duration::from_secs(20), || {
        h.append(message("r", accepted + 1), None).is_ok()
    });
    assert_eq!(
        h.stats().sink_lag_records,
        h.stats().wal_records_pending_sink
    );
    p.shutdown().unwrap();
}

#[test]
fn concurrent_appenders_share_fdatasyncs_and_every_ticket_completes_once() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let mut cfg = config(dir.path());
    cfg.wal_bytes_max = 64 * 1024 * 1024;
    cfg.wal_segment_bytes = 1024 * 1024;
    let (p, _) = Persistence::open(cfg, sinks(&collector, 2)).unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let h = p.handle();
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let token = t * PER_THREAD + i;
                    let ticket = Ticket {
                        shard: (t % 2) as u16,
                        token,
                    };
                    h.append(message(&format!("room{t}"), i + 1), Some(ticket))
                        .unwrap();
                }
            })
        })
        .collect();
    workers.into_iter().for_each(|w| w.join().unwrap());
    let total = THREADS * PER_THREAD;
    wait_for("all durable", Duration::from_secs(30), || {
        collector.durable_count() as u64 >= total
    });
    let durable = collector.durable.lock().unwrap().clone();
    assert_eq!(durable.len() as u64, total, "a ticket completed twice");
    let unique: HashSet<u64> = durable.iter().map(|t| t.token).collect();
    assert_eq!(unique.len() as u64, total);
    assert!(
        durable
            .iter()
            .all(|t| u64::from(t.shard) == (t.token / PER_THREAD) % 2),
        "ticket went to the wrong shard"
    );
    let stats = p.handle().stats();
    assert_eq!(stats.records_appended, total);
    assert!(
        stats.fdatasyncs < total,
        "group commit did not group: {} syncs for {total} records",
        stats.fdatasyncs
    );
    assert!(stats.fdatasyncs >= stats.group_commits.min(1));
    println!(
        "{total} records in {} group commits, {} fdatasyncs",
        stats.group_commits, stats.fdatasyncs
    );
    p.shutdown().unwrap();
}
