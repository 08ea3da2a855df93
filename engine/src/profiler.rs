//! `GET /debug/pprof/profile`: an on-demand CPU profile of the whole process, taken in
//! process with the `pprof` crate (docs/PROFILING.md).
//!
//! pprof arms `setitimer(ITIMER_PROF)`: the kernel sends SIGPROF to whichever thread of the
//! process is using the CPU, every 1/hz s of CPU time, and the handler records that
//! thread's stack by its frame pointers (the build keeps them: .cargo/config.toml). So every
//! shard, the persistence threads and the blocking pools are sampled, each under its
//! thread's name. Nothing here runs on a shard: [`start`] and [`Sampling::finish`] are
//! called on the blocking pool, and the window between them is a timer the shard awaits.
//!
//! One profile at a time, per process: the timer and the handler are process-wide.
#![forbid(unsafe_code)]

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::wire::http::{ProfileFormat, ProfileRequest};

/// Set while a profile is claimed (from the request's arrival to its answer).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// The right to run the process's one profile; released when dropped.
pub struct Claim(());

impl Claim {
    /// `None` while another profile runs.
    pub fn take() -> Option<Claim> {
        RUNNING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Claim(()))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// A profile being sampled. Dropping it (the shard stopped, the client left) stops the
/// timer and releases the claim.
pub struct Sampling {
    guard: pprof::ProfilerGuard<'static>,
    request: ProfileRequest,
    _claim: Claim,
}

/// A rendered profile: what the HTTP response carries.
pub struct Rendered {
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Whole header lines (`Content-Disposition` for a download).
    pub headers: &'static str,
}

/// Starts sampling every thread of the process at `request.hz`. Called on the blocking pool
/// (it installs the signal handler and arms the timer: quick, but not the shard's business).
///
/// No blocklist: pprof drops every sample whose interrupted address lies in a blocklisted
/// library, and a chat server's CPU is largely the kernel's work in its syscalls, whose user
/// address is libc's syscall wrapper — blocklisting libc would hide most of it. The frame
/// pointer unwinder checks every address before it reads it, so walking through a libc frame
/// without a frame pointer at worst loses that frame's caller, never crashes.
pub fn start(claim: Claim, request: ProfileRequest) -> Result<Sampling, String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(request.hz as i32)
        .build()
        .map_err(|e| format!("the profiler did not start: {e}"))?;
    Ok(Sampling {
        guard,
        request,
        _claim: claim,
    })
}

impl Sampling {
    /// Stops sampling and renders the report (symbolising the stacks: tens of milliseconds
    /// to seconds, on the blocking pool).
    pub fn finish(self) -> Result<Rendered, String> {
        let report = self
            .guard
            .report()
            .build()
            .map_err(|e| format!("the profile could not be built: {e}"))?;
        drop(self.guard);
        let rendered = match self.request.format {
            ProfileFormat::Folded => Rendered {
                content_type: "text/plain; charset=utf-8",
                body: folded(&report).join("\n").into_bytes(),
                headers: "",
            },
            ProfileFormat::Svg => Rendered {
                content_type: "image/svg+xml",
                body: svg(&report, &self.request),
                headers: "",
            },
            ProfileFormat::Pb => Rendered {
                content_type: "application/octet-stream",
                body: protobuf(&report)?,
                headers: "Content-Disposition: attachment; filename=\"profile.pb.gz\"\r\n",
            },
        };
        Ok(rendered)
    }
}

/// One line per distinct stack, root first: `thread;outer;…;leaf count`, sorted (inferno's
/// input, and what `sokdo-bench layers` reads).
fn folded(report: &pprof::Report) -> Vec<String> {
    let mut lines: Vec<String> = report
        .data
        .iter()
        .map(|(stack, count)| {
            let mut line = stack.thread_name_or_id();
            for frame in stack.frames.iter().rev() {
                for symbol in frame.iter().rev() {
                    line.push(';');
                    // `;` separates frames and ` ` the count: a symbol keeps neither.
                    line.extend(symbol.name().chars().map(|c| match c {
                        ';' => ':',
                        c => c,
                    }));
                }
            }
            line.push_str(&format!(" {count}"));
            line
        })
        .collect();
    lines.sort_unstable();
    lines
}

fn svg(report: &pprof::Report, request: &ProfileRequest) -> Vec<u8> {
    let lines = folded(report);
    let mut options = pprof::flamegraph::Options::default();
    options.title = format!(
        "sokdo: CPU, {} s at {} Hz ({} samples)",
        request.seconds,
        request.hz,
        report.data.values().sum::<isize>()
    );
    options.count_name = "samples".into();
    let mut out = Vec::new();
    // With no sample at all (an idle process) inferno still writes an SVG that says so,
    // and returns an error: the SVG is the answer.
    let _ = pprof::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out);
    out
}

fn protobuf(report: &pprof::Report) -> Result<Vec<u8>, String> {
    use pprof::protos::Message;
    let profile = report
        .pprof()
        .map_err(|e| format!("the profile could not be encoded: {e}"))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&profile.encode_to_vec())
        .and_then(|()| gz.finish())
        .map_err(|e| format!("the profile could not be compressed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::Claim;

    #[test]
    fn one_claim_at_a_time() {
        let first = Claim::take().expect("nothing runs yet");
        assert!(Claim::take().is_none());
        drop(first);
        assert!(Claim::take().is_some());
    }
}
