//! Measuring: one timed pass (`getrusage` CPU of every thread, wall time, context
//! switches, live io-wq workers), the table rows made of the runs, and what the header lines
//! say about the machine.

use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::path::Path;
use std::time::Instant;

/// One timed pass: CPU of all the process's threads, wall time, context switches, and the
/// io-wq worker threads alive at its end.
#[derive(Clone, Copy)]
pub struct Sample {
    user_us: f64,
    sys_us: f64,
    wall_us: f64,
    switches: f64,
    workers: usize,
}

impl Sample {
    fn cpu_us(&self) -> f64 {
        self.user_us + self.sys_us
    }
}

struct Usage {
    user_us: f64,
    sys_us: f64,
    switches: f64,
}

fn usage() -> io::Result<Usage> {
    let mut ru = MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` points to writable memory of the size of a `rusage`, which getrusage
    // fills on success; it is read only after the return value says so.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getrusage succeeded, so every field is written (and a zeroed rusage is valid).
    let ru = unsafe { ru.assume_init() };
    let micros = |tv: libc::timeval| tv.tv_sec as f64 * 1e6 + tv.tv_usec as f64;
    Ok(Usage {
        user_us: micros(ru.ru_utime),
        sys_us: micros(ru.ru_stime),
        switches: (ru.ru_nvcsw + ru.ru_nivcsw) as f64,
    })
}

/// Every variant `runs` + 1 times, round by round so that drift over time reaches them all
/// alike; the first round warms up and is not kept. `one` makes one measured pass of a
/// variant (by index), on outputs of its own. The samples, per variant.
pub fn rounds<V>(
    variants: &[V],
    runs: usize,
    mut one: impl FnMut(usize, &V) -> io::Result<Sample>,
) -> io::Result<Vec<Vec<Sample>>> {
    let mut samples = vec![Vec::new(); variants.len()];
    for run in 0..=runs {
        for (i, variant) in variants.iter().enumerate() {
            let sample = one(i, variant)?;
            if run > 0 {
                samples[i].push(sample);
            }
        }
    }
    Ok(samples)
}

pub fn measure(pass: impl FnOnce() -> io::Result<()>) -> io::Result<Sample> {
    let before = usage()?;
    let start = Instant::now();
    pass()?;
    let wall_us = start.elapsed().as_secs_f64() * 1e6;
    let after = usage()?;
    Ok(Sample {
        user_us: after.user_us - before.user_us,
        sys_us: after.sys_us - before.sys_us,
        wall_us,
        switches: after.switches - before.switches,
        workers: io_workers(),
    })
}

/// The process's io-wq worker threads (`iou-wrk-PID`) alive now.
fn io_workers() -> usize {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.starts_with("iou-wrk"))
        })
        .count()
}

/// The CPUs the first live io-wq worker may run on, if one is alive.
pub fn worker_cpus() -> Option<String> {
    let tasks = fs::read_dir("/proc/self/task").ok()?;
    tasks.filter_map(Result::ok).find_map(|task| {
        let comm = fs::read_to_string(task.path().join("comm")).ok()?;
        if !comm.starts_with("iou-wrk") {
            return None;
        }
        let status = fs::read_to_string(task.path().join("status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|s| s.trim().to_owned())
    })
}

/// One table row; `workers` says whether the io-wq thread count belongs to the variant
/// (the rings of the other variants keep theirs alive during the plain-syscall ones).
pub fn print_row(name: &str, runs: &[Sample], units: usize, scale: f64, unit: &str, workers: bool) {
    let per = |us: f64| us / units as f64 / scale;
    let mut cpu: Vec<f64> = runs.iter().map(|s| s.cpu_us()).collect();
    cpu.sort_by(f64::total_cmp);
    let median = median_by(runs, Sample::cpu_us);
    let fmt = |v: f64| {
        if unit == "µs" {
            format!("{v:.1}")
        } else {
            format!("{v:.3}")
        }
    };
    println!(
        "| {name} | **{}** | {}–{} | {} / {} | {} | {:.2} | {} |",
        fmt(per(median.cpu_us())),
        fmt(per(cpu[0])),
        fmt(per(cpu[cpu.len() - 1])),
        fmt(per(median.user_us)),
        fmt(per(median.sys_us)),
        fmt(per(median.wall_us)),
        median.switches / units as f64,
        if workers {
            median.workers.to_string()
        } else {
            "–".into()
        }
    );
}

/// The sample whose `key` is the median of the runs (the lower middle one for an even count).
fn median_by(runs: &[Sample], key: fn(&Sample) -> f64) -> Sample {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted[(sorted.len() - 1) / 2]
}

pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn fs_type(dir: &Path) -> String {
    match rustix::fs::statfs(dir) {
        Ok(st) if st.f_type == libc::TMPFS_MAGIC => "tmpfs".into(),
        Ok(st) if st.f_type == libc::EXT4_SUPER_MAGIC => "ext4".into(),
        Ok(st) => format!("filesystem magic {:#x}", st.f_type),
        Err(_) => "?".into(),
    }
}
