use super::*;
use sokdo_replication::frame::Record;
use sokdo_replication::room::Promise;

/// A fresh data directory for one test.
fn dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sokdo-cluster-disk-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Even seqs carry a retry key, so a reload shows the key is written with the record.
fn record(epoch: u64, seq: u64, body: &str) -> Record {
    Record {
        epoch,
        seq,
        key: seq
            .is_multiple_of(2)
            .then(|| format!("alice/{body}").into_bytes()),
        payload: body.as_bytes().to_vec(),
    }
}

fn promise(promised: u64, to: &str, held_epoch: u64, held: u64) -> Option<Promise> {
    Some(Promise {
        promised,
        promised_to: Some(to.to_owned()),
        held_epoch,
        held,
        committed: held.min(1),
    })
}

#[test]
fn what_was_written_is_loaded_after_a_reopen() {
    let dir = dir("reopen");
    let turns = [
        // A claim, then three records, then a new owner's overwrite of seqs 2–3 and a
        // shorter log (a log that got shorter loses its tail on disk too).
        Changes {
            promise: promise(1, "n1", 0, 0),
            ..Changes::default()
        },
        Changes {
            promise: promise(1, "n1", 1, 3),
            records: (1..=3).map(|s| record(1, s, &format!("m{s}"))).collect(),
            truncated_after: None,
            meta: None,
        },
        Changes {
            promise: promise(2, "n2", 2, 2),
            records: vec![record(2, 2, "m2 again")],
            truncated_after: Some(2),
            meta: Some(Meta {
                epoch: 2,
                version: 3,
                bytes: b"the room's metadata".to_vec(),
            }),
        },
    ];
    let mut expected = Durable::default();
    {
        let mut disk = Disk::open(&dir, Durability::Sync).unwrap();
        for c in &turns {
            disk.write(&[("general".to_owned(), c.clone())]).unwrap();
            expected.apply(c);
        }
        let other = Changes {
            promise: promise(5, "n3", 0, 0),
            ..Changes::default()
        };
        disk.write(&[("other".to_owned(), other)]).unwrap();
        assert_eq!(disk.load(u64::MAX).unwrap()["general"], expected);
    }
    let disk = Disk::open(&dir, Durability::Sync).unwrap();
    let loaded = disk.load(u64::MAX).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded["general"], expected);
    assert_eq!(loaded["general"].log.len(), 2);
    assert_eq!(loaded["general"].log[1].payload, b"m2 again");
    let meta = loaded["general"]
        .meta
        .as_ref()
        .expect("the metadata is written");
    assert_eq!((meta.epoch, meta.version), (2, 3));
    assert_eq!(loaded["other"].meta, None);
    assert_eq!(loaded["other"].promised, 5);
    assert!(loaded["other"].log.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn async_commits_are_fsynced_within_the_interval() {
    let dir = dir("async");
    let mut disk = Disk::open(&dir, Durability::Async).unwrap();
    assert_eq!(disk.sync_due(), None, "nothing written, nothing to fsync");
    let before = Instant::now();
    let c = Changes {
        promise: promise(1, "n1", 1, 1),
        records: vec![record(1, 1, "m1")],
        truncated_after: None,
        meta: None,
    };
    disk.write(&[("general".to_owned(), c)]).unwrap();
    let due = disk
        .sync_due()
        .expect("an unsynced commit waits for its fsync");
    assert!(due >= before + ASYNC_SYNC_INTERVAL && due <= Instant::now() + ASYNC_SYNC_INTERVAL);
    disk.sync().unwrap();
    assert_eq!(disk.sync_due(), None);
    drop(disk);
    let loaded = Disk::open(&dir, Durability::Async)
        .unwrap()
        .load(u64::MAX)
        .unwrap();
    assert_eq!(loaded["general"].log, [record(1, 1, "m1")]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_that_is_not_a_database_is_an_error_naming_it() {
    let dir = dir("garbage");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(FILE_NAME);
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let err = Disk::open(&dir, Durability::Sync)
        .err()
        .expect("garbage is refused");
    assert_eq!(err.path, path);
    assert!(
        err.to_string().starts_with(&path.display().to_string()),
        "{err}"
    );
    // The file is left as it was, for whoever investigates.
    assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 64 * 1024]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_record_that_does_not_decode_or_is_out_of_place_is_an_error_naming_room_and_seq() {
    let dir = dir("corrupt");
    let cases: [(&str, (u64, &[u8])); 2] = [
        ("does not decode", (2, b"not a record")),
        ("a hole", (4, &[])),
    ];
    for (case, (seq, bytes)) in cases {
        let mut disk = Disk::open(&dir, Durability::Sync).unwrap();
        let c = Changes {
            promise: promise(1, "n1", 1, 2),
            records: vec![record(1, 1, "m1"), record(1, 2, "m2")],
            truncated_after: Some(2),
            meta: None,
        };
        disk.write(&[("general".to_owned(), c)]).unwrap();
        // Bytes written behind the machines' back, as a damaged or foreign file would hold.
        let bytes = if bytes.is_empty() {
            frame::encode_record(&record(1, seq, "m4")).unwrap()
        } else {
            bytes.to_vec()
        };
        let txn = disk.db.begin_write().unwrap();
        txn.open_table(RECORDS)
            .unwrap()
            .insert(("general", seq), bytes.as_slice())
            .unwrap();
        txn.commit().unwrap();
        let err = disk.load(u64::MAX).expect_err(case).to_string();
        assert!(err.contains(FILE_NAME), "{case}: {err}");
        assert!(err.contains("room \"general\""), "{case}: {err}");
        assert!(err.contains(&format!("seq {seq}")), "{case}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A prefix marked acknowledged beyond the records held is a damaged file: an error naming
/// the room, not a machine that trusts records it does not have.
#[test]
fn an_acknowledged_prefix_beyond_the_log_is_an_error_naming_the_room() {
    let dir = dir("committed");
    let mut disk = Disk::open(&dir, Durability::Sync).unwrap();
    let c = Changes {
        promise: promise(1, "n1", 1, 2),
        records: vec![record(1, 1, "m1"), record(1, 2, "m2")],
        ..Changes::default()
    };
    disk.write(&[("general".to_owned(), c)]).unwrap();
    assert_eq!(disk.load(u64::MAX).unwrap()["general"].committed, 1);
    let txn = disk.db.begin_write().unwrap();
    txn.open_table(COMMITTED)
        .unwrap()
        .insert("general", 3)
        .unwrap();
    txn.commit().unwrap();
    let err = disk.load(u64::MAX).expect_err("beyond the log").to_string();
    assert!(err.contains(FILE_NAME), "{err}");
    assert!(
        err.contains("room \"general\": 2 records, but 3 are marked acknowledged"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_writer_writes_turns_in_order_and_a_close_fsyncs_them() {
    let dir = dir("writer");
    let disk = Disk::open(&dir, Durability::Async).unwrap();
    let wakes = Arc::new(AtomicU64::new(0));
    let counted = wakes.clone();
    let mut writer = Writer::start(disk, move || {
        counted.fetch_add(1, Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(writer.written(), 0);
    for seq in 1..=20 {
        let c = Changes {
            promise: promise(1, "n1", 1, seq),
            records: vec![record(1, seq, &format!("m{seq}"))],
            truncated_after: None,
            meta: None,
        };
        writer.submit(seq, vec![("general".to_owned(), c)]);
    }
    writer.close();
    assert_eq!(
        writer.written(),
        20,
        "every turn written before close returns"
    );
    assert!(wakes.load(Ordering::Relaxed) >= 1);
    let loaded = Disk::open(&dir, Durability::Sync)
        .unwrap()
        .load(u64::MAX)
        .unwrap();
    let seqs: Vec<u64> = loaded["general"].log.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert_eq!(loaded["general"].held, 20);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Goal: a restart holds in memory only the tail below the acknowledged prefix, and the
/// records before it are read back from the file, in order, also while it is written to.
#[test]
fn a_load_keeps_the_tail_and_the_reader_gives_the_rest() {
    let dir = dir("tail");
    let mut disk = Disk::open(&dir, Durability::Async).unwrap();
    let c = Changes {
        promise: Some(Promise {
            promised: 1,
            promised_to: Some("n1".into()),
            held_epoch: 1,
            held: 10,
            committed: 8,
        }),
        records: (1..=10).map(|s| record(1, s, &format!("m{s}"))).collect(),
        ..Changes::default()
    };
    disk.write(&[("general".to_owned(), c)]).unwrap();
    let loaded = disk.load(3).unwrap();
    let d = &loaded["general"];
    assert_eq!((d.base, d.len(), d.committed), (5, 10, 8));
    let seqs: Vec<u64> = d.log.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        [6, 7, 8, 9, 10],
        "three before the prefix's end, and what follows"
    );
    let reader = disk.reader();
    let read: Vec<u64> = reader.read("general", 2, 3).iter().map(|r| r.seq).collect();
    assert_eq!(read, [2, 3, 4]);
    assert_eq!(reader.read("general", 9, 10).len(), 2, "what there is");
    assert!(reader.read("other", 1, 10).is_empty());
    // Everything, as before the bound.
    assert_eq!(disk.load(u64::MAX).unwrap()["general"].log.len(), 10);
    let _ = std::fs::remove_dir_all(&dir);
}
