//! The short run of every fuzz target in the test suite (docs/SECURITY.md "Fuzzing").
//!
//! `scripts/fuzz` runs the targets of `fuzz/` under libFuzzer, coverage-guided, for as long
//! as it is asked. That needs an instrumented build of its own (minutes on two cores), so
//! the test command runs each target's *entry point* — the same function the libFuzzer
//! target calls, with the same checks — in the ordinary test build instead: on every file
//! of its committed corpus, then on a fixed number of mutations of them (bit flips, byte
//! changes, insertions, deletions, truncations, splices of two inputs, repeated blocks),
//! from a seeded generator, so a run is reproducible. Not coverage-guided: it replays what
//! the fuzzer found and looks around it. A panic names the target, the seed input and the
//! mutation number, and writes the input to a file to replay with `cargo fuzz run`.
#![forbid(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Inputs longer than this are cut (libFuzzer's `-max_len` in `scripts/fuzz`).
pub const INPUT_BYTES_MAX: usize = 131_072;

/// The committed corpus of `target`: `fuzz/corpus/<target>/` of the repository.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Runs `entry` on each file of `target`'s corpus, then on `mutations` mutated inputs.
/// Returns how many inputs ran. Panics (failing the test) when `entry` panics, naming the
/// input and where it was written.
pub fn run(target: &str, mutations: usize, entry: impl Fn(&[u8])) -> usize {
    let seeds = read_corpus(&corpus_dir(target));
    assert!(
        !seeds.is_empty(),
        "fuzz/corpus/{target}/ holds no inputs: the target would run on nothing"
    );
    for (name, input) in &seeds {
        check(target, &format!("corpus file {name}"), input, &entry);
    }
    let mut rng = Rng(0x5eed_0f00_d000_0001 ^ target.len() as u64);
    for n in 0..mutations {
        let (name, base) = &seeds[rng.below(seeds.len())];
        let (_, other) = &seeds[rng.below(seeds.len())];
        let input = mutate(base, other, &mut rng);
        check(target, &format!("mutation {n} of {name}"), &input, &entry);
    }
    seeds.len() + mutations
}

fn read_corpus(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut seeds: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), bytes))
        })
        .collect();
    // Directory order is the filesystem's: sorted, so a seed means the same run everywhere.
    seeds.sort();
    seeds
}

fn check(target: &str, what: &str, input: &[u8], entry: &impl Fn(&[u8])) {
    let input = &input[..input.len().min(INPUT_BYTES_MAX)];
    if catch_unwind(AssertUnwindSafe(|| entry(input))).is_ok() {
        return;
    }
    let path = std::env::temp_dir().join(format!("sokdo-fuzz-smoke-{target}-crash"));
    let written = std::fs::write(&path, input).is_ok();
    panic!(
        "fuzz target {target} panicked on {what} ({} bytes{}); replay: \
         (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O {target} {})",
        input.len(),
        if written {
            ", written"
        } else {
            ", not written"
        },
        path.display()
    );
}

/// One mutation of `base` (sometimes spliced with `other`).
fn mutate(base: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..=rng.below(4) {
        let len = out.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                out.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                out.drain(i..i + n);
            }
            4 if len > 0 => out.truncate(rng.below(len)),
            5 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let block = out[i..i + n].to_vec();
                for _ in 0..=rng.below(8) {
                    out.splice(i..i, block.iter().copied());
                }
            }
            _ => {
                let i = rng.below(len + 1);
                let text = TOKENS[rng.below(TOKENS.len())];
                out.splice(i..i, text.iter().copied());
            }
        }
    }
    out
}

/// Bytes that sit on boundaries of lengths, opcodes and text.
const INTERESTING: [u8; 12] = [
    0, 1, 0x7e, 0x7f, 0x80, 0x81, 0x88, 0xff, b'"', b'\\', b'{', b'\n',
];

/// Pieces of the inputs' languages (HTTP, JSON, JWT), inserted whole.
const TOKENS: [&[u8]; 10] = [
    b"\r\n",
    b"\r\n\r\n",
    b"Content-Length: 18446744073709551615\r\n",
    b"\"op\":\"send\"",
    b"{\"",
    b"[[[[[[[[",
    b"1e999",
    b"\\ud800",
    b".",
    b"\xf0\x9f\x98",
];

/// xorshift64*: small, seeded, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a panicking entry point fails the run, naming the target and the input.
    #[test]
    fn a_panic_in_the_entry_point_fails_naming_the_input() {
        let caught = catch_unwind(|| {
            run("http_head", 50, |input| {
                assert!(!input.windows(2).any(|w| w == b"\r\n"), "found a CRLF");
            })
        });
        let message = *caught.unwrap_err().downcast::<String>().unwrap();
        assert!(
            message.contains("fuzz target http_head panicked on"),
            "{message}"
        );
    }

    /// Goal: mutations change inputs, and a run is the same every time.
    #[test]
    fn mutations_differ_from_their_seed_and_repeat() {
        let mut a = Rng(7);
        let mut b = Rng(7);
        let seed = b"GET /ws HTTP/1.1\r\n\r\n";
        let from_a: Vec<Vec<u8>> = (0..100).map(|_| mutate(seed, b"xy", &mut a)).collect();
        let from_b: Vec<Vec<u8>> = (0..100).map(|_| mutate(seed, b"xy", &mut b)).collect();
        assert_eq!(from_a, from_b);
        assert!(from_a.iter().filter(|m| m.as_slice() != seed).count() > 90);
    }
}
