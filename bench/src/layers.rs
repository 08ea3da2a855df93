//! Where the CPU goes, per layer: shares of the samples of folded stacks (`thread;outer;…;leaf
//! count`, as inferno's collapse-perf and sokdo's `/debug/pprof/profile?format=folded`
//! write them). Pure: text in, a table out. A leaf.
//!
//! A stack is counted once, in the layer of the frame nearest its leaf that names one, so a
//! `memcpy` under WebSocket framing is framing, and a `serde_json` call under fan-out is JSON.
//! Kernel frames (`_[k]`, collapse-perf's annotation) are their own layer: with perf, the time
//! in syscalls, io_uring and loopback TCP; an in-process profile cannot see them.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write;

/// Layers, in the order they are printed; each with the frame substrings that name it,
/// checked from the leaf towards the root (the first frame that matches any layer wins).
pub const LAYERS: &[(&str, &[&str])] = &[
    (
        "kernel: syscalls, io_uring, TCP",
        &["_[k]", "[kernel.kallsyms]"],
    ),
    (
        "JSON (serde_json, protocol)",
        &["serde_json::", "sokdo_engine::wire::protocol", "serde::"],
    ),
    (
        "WebSocket framing",
        &["sokdo_engine::wire::ws", "tungstenite::"],
    ),
    (
        "HTTP and auth",
        &[
            "sokdo_engine::wire::http",
            "sokdo_engine::wire::auth",
            "httparse::",
        ],
    ),
    (
        "persistence (WAL, store, sinks)",
        &["sokdo_persistence::", "redb::", "crc32fast::"],
    ),
    (
        "fan-out (shard queues, outbox)",
        &[
            "sokdo_engine::shard::fanout",
            "sokdo_engine::shard::outbox",
            "sokdo_engine::mesh",
        ],
    ),
    (
        "rooms (home, ring, search)",
        &["sokdo_engine::home", "sokdo_engine::room"],
    ),
    (
        "connections (sendmsg, reads, slab)",
        &["sokdo_engine::conn", "sokdo_engine::shard::inbound"],
    ),
    (
        "allocator",
        &[
            "mi_malloc",
            "mi_free",
            "_mi_",
            "mi_heap",
            "malloc",
            "_int_free",
            "__libc_free",
            "cfree",
            "realloc",
        ],
    ),
    (
        "glommio runtime (reactor, scheduler)",
        &["glommio::", "io_uring"],
    ),
    ("other sokdo", &["sokdo_engine::", "sokdo::"]),
];

/// The layer that is none of the above (libc, unresolved frames).
pub const OTHER: &str = "other (libc, unresolved)";

/// Counts per layer and per thread of folded stacks (perf's: ns of CPU time, its sample
/// periods; pprof's: samples).
#[derive(Debug, Default, PartialEq)]
pub struct Shares {
    pub total: u64,
    pub by_layer: BTreeMap<&'static str, u64>,
    /// Threads by name, digits folded (`sokdo-shard-0` and `-1` are `sokdo-shard-N`).
    pub by_thread: BTreeMap<String, u64>,
}

/// The layer of one stack (frames root first).
pub fn layer_of(frames: &[&str]) -> &'static str {
    for frame in frames.iter().rev() {
        for (layer, needles) in LAYERS {
            if needles.iter().any(|n| frame.contains(n)) {
                return layer;
            }
        }
    }
    OTHER
}

/// Reads folded stacks; a line that is not `stack count` is skipped.
pub fn shares(folded: &str) -> Shares {
    let mut s = Shares::default();
    for line in folded.lines() {
        let Some((stack, count)) = line.trim_end().rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        let frames: Vec<&str> = stack.split(';').collect();
        // The first frame is the thread (or process) name; the rest is the stack.
        let thread: String = frames[0]
            .chars()
            .map(|c| if c.is_ascii_digit() { 'N' } else { c })
            .collect();
        let thread = thread.replace("NN", "N").replace("NN", "N");
        s.total += count;
        *s.by_layer.entry(layer_of(&frames[1..])).or_default() += count;
        *s.by_thread.entry(thread).or_default() += count;
    }
    s
}

/// The table a person reads: each layer's and each thread's share, largest first.
pub fn render(s: &Shares) -> String {
    // perf's cpu-clock counts are its sample periods, ns of CPU; pprof's are samples.
    let mut out = format!(
        "{} in all (perf: ns of CPU time; /debug/pprof: samples)\n",
        s.total
    );
    let pct = |n: u64| 100.0 * n as f64 / s.total.max(1) as f64;
    let mut rows = |title: &str, items: Vec<(String, u64)>| {
        let _ = writeln!(out, "{title}");
        for (name, n) in items {
            let _ = writeln!(out, "  {:>5.1} %  {name}", pct(n));
        }
    };
    let mut layers: Vec<(String, u64)> = s
        .by_layer
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    layers.sort_by_key(|l| std::cmp::Reverse(l.1));
    rows(
        "per layer (the frame nearest the leaf that names one):",
        layers,
    );
    let mut threads: Vec<(String, u64)> =
        s.by_thread.iter().map(|(k, v)| (k.clone(), *v)).collect();
    threads.sort_by_key(|t| std::cmp::Reverse(t.1));
    rows("per thread:", threads);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_nearest_the_leaf_names_the_layer() {
        let folded = "\
sokdo-shard-0;glommio::run;sokdo_engine::shard::fanout::deliver;sokdo_engine::wire::ws::text;memcpy 6
sokdo-shard-1;glommio::run;sokdo_engine::shard::fanout::deliver;serde_json::ser::format 2
sokdo-shard-0;glommio::run;sokdo_engine::conn::outbound::send;__sys_sendmsg_[k];tcp_sendmsg_[k] 10
sokdo-wal;sokdo_persistence::wal_thread::run;fdatasync 1
sokdo-shard-0;glommio::run;sokdo_engine::shard::fanout::deliver 1
not a stack line
";
        let s = shares(folded);
        assert_eq!(s.total, 20);
        assert_eq!(s.by_layer["kernel: syscalls, io_uring, TCP"], 10);
        assert_eq!(s.by_layer["WebSocket framing"], 6);
        assert_eq!(s.by_layer["JSON (serde_json, protocol)"], 2);
        assert_eq!(s.by_layer["persistence (WAL, store, sinks)"], 1);
        assert_eq!(s.by_layer["fan-out (shard queues, outbox)"], 1);
        assert_eq!(s.by_thread["sokdo-shard-N"], 19);
        let table = render(&s);
        assert!(
            table.contains(" 50.0 %  kernel: syscalls, io_uring, TCP"),
            "{table}"
        );
        assert!(table.contains(" 95.0 %  sokdo-shard-N"), "{table}");
    }

    #[test]
    fn an_empty_profile_has_no_share() {
        let s = shares("");
        assert_eq!(s.total, 0);
        assert!(render(&s).starts_with("0 in all"));
    }
}
