//! The `process_*` families every Prometheus exporter has (CPU, memory, descriptors, start
//! time), read from `/proc/self` at each scrape, named and typed as the Go and Python client
//! libraries print them, so stock dashboards and alerts work unchanged.
//!
//! Only `/proc/self` is read: the packaged unit's `ProcSubset=pid` hides `/proc/stat`, so the
//! start time comes from the process's start in clock ticks since boot, set against
//! `CLOCK_BOOTTIME` and the wall clock once at start.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The process's start as Unix seconds, computed once.
static START_TIME: OnceLock<Option<f64>> = OnceLock::new();

/// What `/proc/self/stat` says, in the units the metrics use.
struct Stat {
    cpu_seconds: f64,
    /// Seconds after boot at which the process started.
    started_after_boot: f64,
    virtual_bytes: f64,
    resident_bytes: f64,
}

fn read_stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or parentheses
    // itself: fields are counted from after its last ')'. There, field 3 (state) is index 0.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field =
        |n: usize| -> Option<f64> { fields.get(n - 3)?.parse::<u64>().ok().map(|v| v as f64) };
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as f64;
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) / ticks,
        started_after_boot: field(22)? / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
    })
}

/// Open descriptors: the entries of `/proc/self/fd`, less the one that lists them.
fn open_fds() -> Option<f64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some(entries.saturating_sub(1) as f64)
}

fn max_fds() -> Option<f64> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    Some(limit.current? as f64)
}

fn start_time(stat: &Stat) -> Option<f64> {
    *START_TIME.get_or_init(|| {
        let since_boot = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let since_boot = since_boot.tv_sec as f64 + since_boot.tv_nsec as f64 / 1e9;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        Some((now - since_boot + stat.started_after_boot).round())
    })
}

/// Appends the `process_*` families to `out`. A value `/proc` does not give is left out
/// (its family with it), never made up.
pub(super) fn render(out: &mut String) {
    let stat = read_stat();
    let families: [(&str, &str, &str, Option<f64>); 6] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            stat.as_ref().map(|s| s.cpu_seconds),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            stat.as_ref().map(|s| s.resident_bytes),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            stat.as_ref().map(|s| s.virtual_bytes),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open_fds(),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max_fds(),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            stat.as_ref().and_then(start_time),
        ),
    ];
    for (name, kind, help, value) in families {
        if let Some(value) = value {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        }
    }
}
