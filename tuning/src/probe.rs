//! `sokdo-tune probe`: reads this host (`host`), orders its caps on sockets (`caps`) and
//! prints them, lowest first, each with the command that lifts it; `--json` prints the same
//! data and the raw readings for machines.

use crate::caps::{self, Cap};
use crate::host::{self, Host};
use crate::out::emit;
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON (`{schema, shards, caps: [{name, value, sockets_allowed, liftable, fix,
    /// scope, note}], readings}`) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Shards sokdo will run (for locked memory and the accept backlog). Default: the CPUs
    /// this process may use (affinity mask and cgroup quota).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub shards: Option<u64>,
}

/// `probe --json`'s document. `schema` changes only when a field changes meaning.
#[derive(Serialize)]
struct Report<'a> {
    schema: u32,
    shards: u64,
    first_cap: Option<&'a Cap>,
    caps: &'a [Cap],
    readings: &'a Host,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let host = host::read();
    let shards = args.shards.unwrap_or_else(|| caps::default_shards(&host));
    let caps = caps::caps(&host, shards);
    if args.json {
        let report = Report {
            schema: 1,
            shards,
            first_cap: caps.first(),
            caps: &caps,
            readings: &host,
        };
        emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))
    } else {
        emit(&table(&caps, shards))
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The human table: one block per cap, lowest first.
fn table(caps: &[Cap], shards: u64) -> String {
    let mut out = format!(
        "sokdo-tune probe: what caps concurrent sockets of one sokdo process \
         ({shards} shard(s)), lowest first\n\n"
    );
    for (i, c) in caps.iter().enumerate() {
        let sockets = c.sockets_allowed.map_or_else(
            || "no cap on the count".to_string(),
            |s| format!("{} sockets", thousands(s)),
        );
        out.push_str(&format!(
            "{:>2}. {} — {sockets} [{}]\n",
            i + 1,
            c.name,
            c.scope
        ));
        out.push_str(&format!("    value: {}\n", c.value));
        let how = if c.liftable {
            "fix"
        } else {
            "fix (not liftable here)"
        };
        out.push_str(&format!("    {how}: {}\n", c.fix));
        if !c.note.is_empty() {
            out.push_str(&format!("    note: {}\n", c.note));
        }
    }
    if let Some(first) = caps.first() {
        out.push_str(&format!(
            "\nfirst cap: {} at {} sockets{}\n",
            first.name,
            first.sockets_allowed.map_or("?".into(), thousands),
            if first.liftable {
                ""
            } else {
                " (cannot be lifted here)"
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(19_900), "19,900");
        assert_eq!(thousands(1_048_476), "1,048,476");
    }
}
