//! Prometheus metrics (README "Metrics, dashboard and alerts"): the only place metric names are spelled.
//!
//! Counters, gauges and the job histogram go through the `metrics` facade into
//! `metrics-exporter-prometheus`'s recorder. Each shard holds its own labelled handles, so
//! shards never touch the same atomic. Crypto time is a fractional-seconds counter, which the
//! facade's integer counters cannot carry, so this room keeps it (one cache line per shard)
//! and renders that family itself, and the `process_*` families ([`process`]). `/metrics` is
//! served by hyper on a thread of its own ([`http`]): connections are served concurrently and
//! bounded in number and time. With metrics off, or before [`install`], every call here is a
//! no-op.
//!
//! What this room does not do: decide what to count (the shards and jobs call it).

mod http;
mod process;

use std::cell::OnceCell;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::{Code, Error};
use crate::limits::MAX_QUEUED_JOBS_PER_SHARD;
use crate::protocol::FileOp;

const JOBS: &str = "ringcrypt_jobs_total";
const JOB_SECONDS: &str = "ringcrypt_job_duration_seconds";
const BYTES_READ: &str = "ringcrypt_bytes_read_total";
const BYTES_WRITTEN: &str = "ringcrypt_bytes_written_total";
const QUEUE_DEPTH: &str = "ringcrypt_queue_depth";
const QUEUE_CAPACITY: &str = "ringcrypt_queue_capacity";
const INFLIGHT: &str = "ringcrypt_jobs_inflight";
const CRYPTO_SECONDS: &str = "ringcrypt_crypto_seconds_total";
const CONNECTIONS: &str = "ringcrypt_connections_active";
const ERRORS: &str = "ringcrypt_errors_total";
const BUILD_INFO: &str = "ringcrypt_build_info";
const LOG_DROPPED: &str = "ringcrypt_log_dropped_total";
const DIR_FSYNCS: &str = "ringcrypt_dir_fsyncs_total";
const DIRECT_IO_FALLBACKS: &str = "ringcrypt_direct_io_fallbacks_total";
const VERIFY_FAILURES: &str = "ringcrypt_verify_failures_total";

/// The codes a `verify` of a sealed file fails with when the file itself is bad, whose
/// series exist from the start (at zero); any other code gets its series when it happens.
const VERIFY_FAILURE_CODES: [Code; 3] = [Code::AuthFailed, Code::UnknownKey, Code::BadFormat];

/// Job duration buckets: 10 µs (a cached 4 KiB file) to 100 s (tens of GiB).
const JOB_BUCKETS: [f64; 15] = [
    1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0,
];

/// One shard's crypto nanoseconds, alone on its cache line.
#[repr(align(64))]
struct Padded(AtomicU64);

static CRYPTO_NANOS: OnceLock<Box<[Padded]>> = OnceLock::new();

/// One shard's metric handles, registered once so that counting allocates nothing (the
/// facade's macros build their label sets anew on every call).
pub struct ShardMetrics {
    shard: usize,
    bytes_read: Counter,
    bytes_written: Counter,
    queue_depth: Gauge,
    inflight: Gauge,
    dir_fsyncs: Counter,
    direct_io_fallbacks: Counter,
    /// `ringcrypt_jobs_total`, by op (in [`FileOp::ALL`] order) and [`JobResult`].
    jobs_ended: [[Counter; JobResult::ALL.len()]; FileOp::ALL.len()],
    /// `ringcrypt_job_duration_seconds`, by op (in [`FileOp::ALL`] order); the handle is
    /// taken when the shard ends its first job of the op (the series itself exists from
    /// [`preregister`] on, empty).
    job_seconds: [OnceCell<Histogram>; FileOp::ALL.len()],
}

impl ShardMetrics {
    pub fn new(shard: usize) -> ShardMetrics {
        let label = shard.to_string();
        gauge!(QUEUE_CAPACITY, "shard" => label.clone()).set(MAX_QUEUED_JOBS_PER_SHARD as f64);
        ShardMetrics {
            shard,
            bytes_read: counter!(BYTES_READ, "shard" => label.clone()),
            bytes_written: counter!(BYTES_WRITTEN, "shard" => label.clone()),
            queue_depth: gauge!(QUEUE_DEPTH, "shard" => label.clone()),
            inflight: gauge!(INFLIGHT, "shard" => label.clone()),
            dir_fsyncs: counter!(DIR_FSYNCS, "shard" => label.clone()),
            direct_io_fallbacks: counter!(DIRECT_IO_FALLBACKS, "shard" => label),
            jobs_ended: FileOp::ALL.map(|op| {
                JobResult::ALL
                    .map(|result| counter!(JOBS, "op" => op.as_str(), "result" => result.as_str()))
            }),
            job_seconds: Default::default(),
        }
    }

    pub fn read(&self, bytes: u64) {
        self.bytes_read.increment(bytes);
    }

    pub fn written(&self, bytes: u64) {
        self.bytes_written.increment(bytes);
    }

    /// An output directory's fsync started, for a batch of jobs that linked into it.
    pub fn dir_fsync(&self) {
        self.dir_fsyncs.increment(1);
    }

    /// A file that was to run with direct IO fell back to buffered IO: its file system
    /// refused `O_DIRECT`.
    pub fn direct_io_fallback(&self) {
        self.direct_io_fallbacks.increment(1);
    }

    pub fn jobs(&self, queued: usize, running: usize) {
        self.queue_depth.set(queued as f64);
        self.inflight.set(running as f64);
    }

    /// A file job ended after `seconds`.
    pub fn job_ended(&self, op: FileOp, result: JobResult, seconds: f64) {
        let index = op as usize;
        self.jobs_ended[index][result as usize].increment(1);
        self.job_seconds[index]
            .get_or_init(|| histogram!(JOB_SECONDS, "op" => op.as_str()))
            .record(seconds);
    }

    /// A `verify` found a file that does not verify (or could not read it), with `code`.
    pub fn verify_failed(&self, code: Code) {
        counter!(VERIFY_FAILURES, "code" => code.as_str()).increment(1);
    }

    pub fn crypto(&self, spent: Duration) {
        if let Some(table) = CRYPTO_NANOS.get()
            && let Some(slot) = table.get(self.shard)
        {
            slot.0.fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

/// How a job ended, for `ringcrypt_jobs_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobResult {
    Ok,
    Failed,
    Cancelled,
}

impl JobResult {
    pub const ALL: [JobResult; 3] = [JobResult::Ok, JobResult::Failed, JobResult::Cancelled];

    /// The `result` label.
    pub fn as_str(self) -> &'static str {
        match self {
            JobResult::Ok => "ok",
            JobResult::Failed => "failed",
            JobResult::Cancelled => "cancelled",
        }
    }
}

/// An error reply with `code` was sent.
pub fn error_reply(code: Code) {
    counter!(ERRORS, "code" => code.as_str()).increment(1);
}

/// A log record was dropped: the logging thread's queue was full.
pub fn log_dropped() {
    counter!(LOG_DROPPED).increment(1);
}

/// The number of open client connections.
pub fn connections(open: usize) {
    gauge!(CONNECTIONS).set(open as f64);
}

/// Sets `ringcrypt_build_info` once the IO backend is known.
pub fn build_info(version: &str, backend: &str) {
    gauge!(BUILD_INFO, "version" => version.to_string(), "backend" => backend.to_string()).set(1.0);
}

/// Creates every series at zero: each shard's, each error code's, each job outcome's, and
/// each op's (empty) duration histogram.
pub fn preregister(shards: usize) {
    for shard in 0..shards {
        drop(ShardMetrics::new(shard));
    }
    counter!(LOG_DROPPED).absolute(crate::daemon::logging::dropped());
    for code in Code::ALL {
        counter!(ERRORS, "code" => code.as_str()).absolute(0);
    }
    for code in VERIFY_FAILURE_CODES {
        counter!(VERIFY_FAILURES, "code" => code.as_str()).absolute(0);
    }
    for op in FileOp::ALL {
        for result in JobResult::ALL {
            counter!(JOBS, "op" => op.as_str(), "result" => result.as_str()).absolute(0);
        }
        // A registered histogram is exported (all buckets 0) before it holds a sample.
        drop(histogram!(JOB_SECONDS, "op" => op.as_str()));
    }
}

/// The running endpoint.
pub struct Exporter {
    pub addr: SocketAddr,
}

/// Installs the recorder and serves `/metrics` on `addr` from a background thread.
pub fn install(addr: SocketAddr, shards: usize) -> Result<Exporter, Error> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        Error::new(
            Code::from_io(&e),
            format!("cannot serve metrics on {addr}: {e}"),
        )
    })?;
    let addr = listener.local_addr().unwrap_or(addr);
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(JOB_SECONDS.into()), &JOB_BUCKETS)
        .map_err(|e| Error::new(Code::Internal, format!("metrics: {e}")))?
        .install_recorder()
        .map_err(|e| Error::new(Code::Internal, format!("metrics: {e}")))?;
    let _ = CRYPTO_NANOS.set((0..shards).map(|_| Padded(AtomicU64::new(0))).collect());
    describe();
    connections(0);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            if let Err(err) = http::serve(listener, move || render(&handle)) {
                eprintln!("ringcryptd: warning: the metrics endpoint stopped: {err}");
            }
        })
        .map_err(|e| {
            Error::new(
                Code::Internal,
                format!("cannot start the metrics thread: {e}"),
            )
        })?;
    Ok(Exporter { addr })
}

fn describe() {
    describe_counter!(
        JOBS,
        "File jobs that ended, by operation and result (ok, failed, cancelled)."
    );
    describe_histogram!(
        JOB_SECONDS,
        "Wall time of file jobs from start to done, by operation."
    );
    describe_counter!(BYTES_READ, "Bytes read from input files, by shard.");
    describe_counter!(BYTES_WRITTEN, "Bytes written to output files, by shard.");
    describe_gauge!(QUEUE_DEPTH, "Jobs waiting for buffers on the shard.");
    describe_gauge!(
        QUEUE_CAPACITY,
        "Jobs a shard's queue holds before new single jobs get busy."
    );
    describe_gauge!(INFLIGHT, "Jobs running on the shard.");
    describe_counter!(
        DIR_FSYNCS,
        "Fsyncs of output directories (fsync always), one per batch of jobs that linked into the directory, by shard."
    );
    describe_counter!(
        DIRECT_IO_FALLBACKS,
        "Files that were to run with direct IO (--io direct, or auto) and ran buffered because their file system refused O_DIRECT, by shard."
    );
    describe_gauge!(CONNECTIONS, "Open client connections.");
    describe_counter!(ERRORS, "Error replies sent, by wire code.");
    describe_counter!(
        VERIFY_FAILURES,
        "Files a verify found damaged, under an unknown key or not sealed (by wire code)."
    );
    describe_counter!(
        LOG_DROPPED,
        "Log records dropped because the logging thread's queue was full (stderr slow or stuck)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; labels carry the version and the IO backend."
    );
}

/// The exposition text: the recorder's families, the crypto-seconds counter and the
/// `process_*` families.
fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    let mut text = handle.render();
    let _ = write!(
        text,
        "# HELP {CRYPTO_SECONDS} Seconds spent in AES and HMAC, by shard.\n# TYPE {CRYPTO_SECONDS} counter\n"
    );
    if let Some(table) = CRYPTO_NANOS.get() {
        for (shard, slot) in table.iter().enumerate() {
            let seconds = slot.0.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(text, "{CRYPTO_SECONDS}{{shard=\"{shard}\"}} {seconds}");
        }
    }
    process::render(&mut text);
    text
}
