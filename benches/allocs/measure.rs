//! One round of the allocs bench and its measured window: how a file job names its files,
//! request lines encoded before the window as the `ringcrypt` client encodes them, the round
//! run job by job on the quiet client, the process-wide and client-thread counts across the
//! window with the daemon idle on both sides, and the table of the figures per unit.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use ringcrypt::protocol::{self, FileJobSpec, FileOp, Request, RequestId};

use crate::counting::{Counts, thread_allocs};
use crate::quiet_client::Conn;
use crate::support::Table;

/// How a file job names its files.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// By path under the allowed root (trees, scripts, and the client's fallback).
    Path,
    /// By path, `overwrite: true`.
    Overwrite,
    /// A directory tree by path, `recursive: true`.
    Tree,
    /// `fds: true`: the input and an unnamed temp file passed as descriptors (what the
    /// `ringcrypt` client sends for single files).
    Passed,
}

/// One request line, encoded as the `ringcrypt` client encodes it (`protocol::encode_request`).
pub fn request_line(id: u64, op: FileOp, input: &Path, output: &Path, form: Form) -> Vec<u8> {
    let mut spec = FileJobSpec::new(op, input.to_path_buf(), output.to_path_buf());
    spec.recursive = form == Form::Tree;
    spec.overwrite = form == Form::Overwrite;
    spec.fds = form == Form::Passed;
    protocol::encode_request(Some(&RequestId::from(id)), &Request::File(spec)).into_bytes()
}

/// How long the bench waits for the daemon to go idle around each window: longer than the
/// shards' 100 ms tick, so a job's tail (its metrics, its slot, the next admission) is done.
pub const SETTLE: Duration = Duration::from_millis(250);

/// One measured window.
pub struct Window {
    units: usize,
    pub counts: Counts,
    /// Allocations the client thread itself made inside the window (must be 0).
    pub client: u64,
    elapsed: Duration,
}

/// Runs `jobs` in order, each to its `done`, inside a measured window.
pub fn measure(conn: &mut Conn, jobs: &Jobs, units: usize) -> Window {
    thread::sleep(SETTLE);
    let client_before = thread_allocs();
    let before = Counts::now();
    let started = Instant::now();
    jobs.run(conn);
    let elapsed = started.elapsed();
    thread::sleep(SETTLE);
    let counts = Counts::now().since(before);
    let client = thread_allocs() - client_before;
    Window {
        units,
        counts,
        client,
        elapsed,
    }
}

/// A round of requests, encoded before the window: the lines, and for `fds: true` the
/// input paths to open and the directory to make the temp files in.
pub struct Jobs<'a> {
    pub lines: Vec<Vec<u8>>,
    /// What every job's `done` must contain.
    pub expect: &'a [u8],
    pub passed: Option<(Vec<PathBuf>, &'a Path)>,
}

impl Jobs<'_> {
    /// Runs the round, each job to its `done`. Allocation-free.
    pub fn run(&self, conn: &mut Conn) {
        match &self.passed {
            None => {
                for line in &self.lines {
                    conn.job(line, self.expect);
                }
            }
            Some((inputs, out_dir)) => {
                for (line, input) in self.lines.iter().zip(inputs) {
                    conn.job_passing(line, input, out_dir, self.expect);
                }
            }
        }
    }
}

pub struct Row {
    pub name: String,
    pub per: &'static str,
    pub window: Window,
}

pub fn per(value: u64, units: usize) -> f64 {
    value as f64 / units.max(1) as f64
}

pub fn print_table(rows: &[Row]) {
    let mut table = Table::new(
        &[
            "scenario",
            "per",
            "measured",
            "allocs/unit",
            "reallocs/unit",
            "bytes/unit",
            "client allocs",
            "us/unit",
        ],
        1,
    );
    for row in rows {
        let w = &row.window;
        table.row(vec![
            row.name.clone(),
            row.per.to_string(),
            w.units.to_string(),
            format!("{:.2}", per(w.counts.allocs, w.units)),
            format!("{:.2}", per(w.counts.reallocs, w.units)),
            format!("{:.0}", per(w.counts.bytes, w.units)),
            w.client.to_string(),
            format!(
                "{:.1}",
                w.elapsed.as_secs_f64() * 1e6 / w.units.max(1) as f64
            ),
        ]);
    }
    table.print_without_rule();
}
