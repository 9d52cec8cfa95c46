//! The allocation call sites of the allocs bench's sampled round: each captured backtrace
//! parsed into frames, grouped at its innermost frame in this crate's `src/` with the callee
//! it allocated through and its most common callers, and the most common sites printed with
//! estimates per unit.

use std::backtrace::Backtrace;
use std::collections::HashMap;
use std::time::Instant;

/// One frame of a resolved backtrace.
struct Frame {
    symbol: String,
    /// `src/file.rs:line` for frames in this crate, else the file as printed (if any).
    location: Option<String>,
}

/// Parses a `Backtrace`'s display (`  N: symbol` then `at file:line:col`).
fn frames(trace: &Backtrace) -> Vec<Frame> {
    let text = trace.to_string();
    let mut frames: Vec<Frame> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(at) = trimmed.strip_prefix("at ") {
            if let Some(frame) = frames.last_mut() {
                frame.location = Some(short_location(at));
            }
            continue;
        }
        let symbol = match trimmed.split_once(": ") {
            Some((index, symbol)) if index.bytes().all(|b| b.is_ascii_digit()) => symbol,
            // An inlined frame printed without a number of its own.
            _ => trimmed,
        };
        frames.push(Frame {
            symbol: strip_hash(symbol).to_string(),
            location: None,
        });
    }
    frames
}

/// `./src/job.rs:617:21` or `/abs/.../src/job.rs:617:21` as `src/job.rs:617`.
fn short_location(at: &str) -> String {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/");
    let path = at
        .strip_prefix(manifest)
        .or_else(|| at.strip_prefix("./"))
        .unwrap_or(at);
    match path.rsplit_once(':') {
        Some((file_line, col)) if col.bytes().all(|b| b.is_ascii_digit()) => file_line.to_string(),
        _ => path.to_string(),
    }
}

/// Drops the `::h0123456789abcdef` suffix of a mangled-then-demangled symbol.
fn strip_hash(symbol: &str) -> &str {
    match symbol.rsplit_once("::h") {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name
        }
        _ => symbol,
    }
}

/// Whether a frame is this crate's code (its `src/`, not a dependency's or the bench's).
fn in_crate(frame: &Frame) -> bool {
    match &frame.location {
        Some(location) => location.starts_with("src/"),
        None => frame.symbol.starts_with("ringcrypt::") || frame.symbol.starts_with("<ringcrypt::"),
    }
}

fn describe(frame: &Frame) -> String {
    match &frame.location {
        Some(location) if location.starts_with("src/") => {
            format!("{location} ({})", frame.symbol)
        }
        _ => frame.symbol.clone(),
    }
}

/// Caller chains printed per call site.
const CALLER_CHAINS_SHOWN: usize = 3;

/// Call site statistics for one innermost crate frame.
#[derive(Default)]
struct Site {
    /// Sampled allocations and reallocations.
    allocs: u64,
    reallocs: u64,
    /// The frame the allocation went through just inside the site (a dependency or std).
    callees: HashMap<String, u64>,
    /// The next crate frames out (callers), as one string.
    callers: HashMap<String, u64>,
}

/// The `n` most common entries, most common first.
fn most_common(map: &HashMap<String, u64>, n: usize) -> Vec<(&str, u64)> {
    let mut entries: Vec<(&str, u64)> = map.iter().map(|(k, &v)| (k.as_str(), v)).collect();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    entries.truncate(n);
    entries
}

impl Site {
    fn count(&self) -> u64 {
        self.allocs + self.reallocs
    }

    fn add(&mut self, realloc: bool) {
        if realloc {
            self.reallocs += 1;
        } else {
            self.allocs += 1;
        }
    }
}

/// Groups the samples by call site and prints the `top` most common. `events` is the
/// window's allocations plus reallocations, which the samples were drawn from.
pub fn print_sites(
    traces: &[(Backtrace, bool)],
    events: u64,
    (round, unit): (&str, &str),
    jobs: usize,
    top: usize,
) {
    let started = Instant::now();
    let mut sites: HashMap<String, Site> = HashMap::new();
    let mut with_lines = false;
    for (trace, realloc) in traces {
        let frames = frames(trace);
        with_lines |= frames
            .iter()
            .any(|f| f.location.as_deref().is_some_and(|l| l.starts_with("src/")));
        let Some(index) = frames.iter().position(in_crate) else {
            let site = sites
                .entry("(no frame in the ringcrypt crate)".to_string())
                .or_default();
            site.add(*realloc);
            continue;
        };
        let site = sites.entry(describe(&frames[index])).or_default();
        site.add(*realloc);
        if index > 0 {
            let callee = &frames[index - 1];
            *site.callees.entry(callee.symbol.clone()).or_default() += 1;
        }
        let callers: Vec<String> = frames[index + 1..]
            .iter()
            .filter(|f| in_crate(f))
            .take(3)
            .map(|f| match &f.location {
                Some(location) => location.clone(),
                None => f.symbol.clone(),
            })
            .collect();
        *site.callers.entry(callers.join(" < ")).or_default() += 1;
    }
    let total: u64 = sites.values().map(Site::count).sum();
    // Each sample stands for this many allocator calls of the window, per job.
    let scale = events as f64 / total.max(1) as f64 / jobs.max(1) as f64;
    let mut ranked: Vec<(&String, &Site)> = sites.iter().collect();
    ranked.sort_by(|a, b| b.1.count().cmp(&a.1.count()).then(a.0.cmp(b.0)));
    println!(
        "\nallocation call sites, {round}: {total} backtraces sampled from {events} \
         allocations and reallocations over {jobs} {unit}s (resolved in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    println!(
        "top {top} by count (allocations + reallocations), each at its innermost frame in the \
         ringcrypt crate, with the callee it allocated through and its most common callers in \
         the crate (innermost first); per-{unit} figures are estimates from the samples"
    );
    if !with_lines {
        println!(
            "note: no file:line information (no debug info); rerun with \
             CARGO_PROFILE_BENCH_DEBUG=line-tables-only for call sites by line"
        );
    }
    for (rank, (name, site)) in ranked.iter().take(top).enumerate() {
        let share = 100.0 * site.count() as f64 / total.max(1) as f64;
        println!(
            "{:>2}. {share:5.1}%  ~{:5.2} allocs + {:5.2} reallocs /{unit}  {name}",
            rank + 1,
            site.allocs as f64 * scale,
            site.reallocs as f64 * scale,
        );
        for (callee, n) in most_common(&site.callees, 1) {
            println!(
                "        via  {callee} ({:.0}%)",
                100.0 * n as f64 / site.count() as f64
            );
        }
        for (callers, n) in most_common(&site.callers, CALLER_CHAINS_SHOWN) {
            if !callers.is_empty() {
                println!(
                    "        from {callers} ({:.0}%)",
                    100.0 * n as f64 / site.count() as f64
                );
            }
        }
    }
    let shown: u64 = ranked.iter().take(top).map(|(_, s)| s.count()).sum();
    println!(
        "    (the top {top} hold {:.1}% of the samples; {} sites in all)",
        100.0 * shown as f64 / total.max(1) as f64,
        ranked.len()
    );
}
