//! Test hooks, all in one place, compiled in only with the `test-hooks` feature (the test
//! suite's); in builds users run each is an empty inline function. They let the suite kill
//! the daemon at each step of the write protocol, wedge a shard, and play a file system
//! without `O_TMPFILE` or a kernel that refuses links by descriptor.

use std::time::Instant;

/// A test hook: with the `test-hooks` feature and `RINGCRYPT_FAILPOINT=NAME` in the
/// environment, the daemon kills itself (SIGKILL, as `kill -9` would) when a job reaches the
/// step NAME: `opened`, `temp_created`, `written` (all data written, before the fsync),
/// `fsynced` (before the link), `linked` (before the directory fsync), `done`.
/// `RINGCRYPT_FAILPOINT=NAME@K` waits for the K-th time any job reaches it (say, after K
/// files of a tree were linked).
#[cfg(feature = "test-hooks")]
pub fn failpoint(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static ARMED: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var("RINGCRYPT_FAILPOINT").ok()?;
        Some(match spec.split_once('@') {
            Some((step, k)) => (step.to_string(), k.parse().ok()?),
            None => (spec, 1),
        })
    });
    if let Some((step, k)) = armed
        && step == name
        && HITS.fetch_add(1, Ordering::Relaxed) + 1 >= *k
    {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn failpoint(_name: &str) {}

/// Test hook (feature `test-hooks`): with `RINGCRYPT_TEST_NO_TMPFILE` set, answer as a file
/// system without `O_TMPFILE` does, so the suite can drive the named-temp-file path that
/// such file systems (vfat, some FUSE and network file systems) take. Always false in
/// builds users run.
#[cfg(feature = "test-hooks")]
pub fn tmpfile_refused() -> bool {
    static REFUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REFUSED.get_or_init(|| std::env::var_os("RINGCRYPT_TEST_NO_TMPFILE").is_some())
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn tmpfile_refused() -> bool {
    false
}

/// Test hook (feature `test-hooks`): with `RINGCRYPT_TEST_NO_LINK_BY_FD` set, answer a link
/// by descriptor (`AT_EMPTY_PATH`) as a kernel that refuses it does (`ENOENT`, nothing
/// linked), so the suite can drive the fallback through `/proc/self/fd` that daemons
/// without `CAP_DAC_READ_SEARCH` on kernels before 6.10 take. Always false in builds users
/// run.
#[cfg(feature = "test-hooks")]
pub fn link_by_fd_refused() -> bool {
    static REFUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REFUSED.get_or_init(|| std::env::var_os("RINGCRYPT_TEST_NO_LINK_BY_FD").is_some())
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn link_by_fd_refused() -> bool {
    false
}

/// Test hook (feature `test-hooks`): with `RINGCRYPT_TEST_NO_DIRECT_IO` set, answer as a
/// file system without `O_DIRECT` does, so the suite can drive the per-file fallback to
/// buffered IO on any disk. Always false in builds users run.
#[cfg(feature = "test-hooks")]
pub fn direct_io_refused() -> bool {
    static REFUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REFUSED.get_or_init(|| std::env::var_os("RINGCRYPT_TEST_NO_DIRECT_IO").is_some())
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn direct_io_refused() -> bool {
    false
}

/// Test hook (feature `test-hooks`): with `RINGCRYPT_TEST_REVERSE_COMPLETIONS` set, the
/// synchronous backend hands back the ops that finished together newest first, as io_uring
/// may (a direct read often completes before one submitted earlier), so the suite can drive
/// the out-of-order paths on any file system. Always false in builds users run.
#[cfg(feature = "test-hooks")]
pub fn reverse_completions() -> bool {
    static REVERSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REVERSED.get_or_init(|| std::env::var_os("RINGCRYPT_TEST_REVERSE_COMPLETIONS").is_some())
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn reverse_completions() -> bool {
    false
}

/// How often a shard runs its tick ([`TICK`](crate::limits::TICK)). Test hook (feature
/// `test-hooks`): `RINGCRYPT_TEST_TICK_EVERY_LOOP` runs it on every pass of the loop, so a
/// test can find what the tick would see in the moment between two steps of a job (a file
/// job's first `progress` report lands there). Always `TICK` in builds users run.
#[cfg(feature = "test-hooks")]
pub fn tick_every() -> std::time::Duration {
    static EVERY: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();
    *EVERY.get_or_init(|| {
        if std::env::var_os("RINGCRYPT_TEST_TICK_EVERY_LOOP").is_some() {
            std::time::Duration::ZERO
        } else {
            crate::limits::TICK
        }
    })
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn tick_every() -> std::time::Duration {
    crate::limits::TICK
}

/// `RINGCRYPT_TEST_HANG_SHARD=I:MS` makes shard I stop looping MS milliseconds after
/// start, as a wedged shard would, so the watchdog test can see the pings stop.
#[cfg(feature = "test-hooks")]
pub fn maybe_hang(index: usize, started: Instant) {
    let Ok(spec) = std::env::var("RINGCRYPT_TEST_HANG_SHARD") else {
        return;
    };
    let Some((shard, after)) = spec.split_once(':') else {
        return;
    };
    let (Ok(shard), Ok(after)) = (shard.parse::<usize>(), after.parse::<u64>()) else {
        return;
    };
    if shard == index && started.elapsed().as_millis() as u64 >= after {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

#[cfg(not(feature = "test-hooks"))]
pub fn maybe_hang(_index: usize, _started: Instant) {}
