//! The daemon's log: leveled records through the `log` facade, written to stderr by one
//! logging thread.
//!
//! Every thread (shards included) hands a record to a bounded queue and goes on: the record
//! is formatted into a recycled buffer, pushed without waiting, and the logging thread is
//! woken. When the queue is full (stderr is slow or stuck: a pipe nobody reads, a stalled
//! journal), the record is dropped and counted in `ringcrypt_log_dropped_total`; a shard never
//! waits on the log. Once warm, handing over a record allocates nothing.
//!
//! Two formats (`--log-format`): `text`, one line per record, `audit: VERDICT k=v ...` for
//! the audit records and `ringcryptd: [warning: |error: ]MESSAGE` for the rest; and `json`,
//! one object per line with `ts`, `level`, `target`, `msg` and the record's fields. When
//! stderr is the journal (systemd sets `JOURNAL_STREAM` to the device and inode of the stream
//! it hands over, and stderr is that stream), each line starts with its syslog priority:
//! `<3>` error, `<4>` warning, `<5>` audit records at info, `<6>` other info, `<7>` debug and
//! trace.
//!
//! What this room does not do: decide what is logged (the shards' `audit` room and the
//! daemon's setup do).

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use crossbeam_queue::ArrayQueue;
use log::kv::{Key, Value, VisitSource, VisitValue};
use log::{Level, LevelFilter, Log, Metadata, Record};
use serde::Deserialize;

use crate::error::{Code, Error};
use crate::limits::{
    LOG_BATCH_LINGER, LOG_BATCH_RECORDS, LOG_FLUSH_WAIT, LOG_QUEUE_RECORDS,
    LOG_RECORD_INITIAL_BYTES, LOG_RECORD_KEEP_BYTES, LOG_SPARE_RECORDS,
};

/// The target of audit records (one per request, one per finished job).
pub const AUDIT: &str = "audit";

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    // `audit: accepted uid=0 gid=0 op=encrypt input="/srv/a" ...`, one record a line. (Plain
    // comments here: doc comments would change the layout of the whole `--help`.)
    #[default]
    Text,
    // One JSON object a line: `{"ts":...,"level":"info","target":"audit","msg":"accepted",...}`.
    Json,
}

/// `--log-level`: the least severe records written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    // Only failures of the daemon itself.
    Error,
    // Also refused requests, failed jobs and warnings.
    Warn,
    // Also every accepted request and finished job (the audit log) and start-up lines.
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Error => LevelFilter::Error,
            LogLevel::Warn => LevelFilter::Warn,
            LogLevel::Info => LevelFilter::Info,
            LogLevel::Debug => LevelFilter::Debug,
            LogLevel::Trace => LevelFilter::Trace,
        }
    }
}

/// The records in flight between the threads that log and the logging thread.
struct Queue {
    /// Formatted lines waiting to be written, oldest first.
    lines: ArrayQueue<Vec<u8>>,
    /// Written lines' buffers, for the next records.
    spare: ArrayQueue<Vec<u8>>,
    /// Records pushed and not yet written: what `flush` waits for.
    pending: AtomicU64,
    writer: Thread,
    /// The logging thread is about to sleep or sleeps: the next record wakes it. Only then,
    /// so a busy shard pays no wake-up call per record.
    sleeping: AtomicBool,
}

/// The one logger of the process.
struct Logger {
    json: AtomicBool,
    journal: AtomicBool,
    queue: OnceLock<Queue>,
    dropped: AtomicU64,
}

static LOGGER: Logger = Logger {
    json: AtomicBool::new(false),
    journal: AtomicBool::new(false),
    queue: OnceLock::new(),
    dropped: AtomicU64::new(0),
};

/// Installs the logger (once per process; later calls change the level and format) and
/// starts the logging thread.
pub fn init(level: LogLevel, format: LogFormat) -> Result<(), Error> {
    LOGGER
        .json
        .store(format == LogFormat::Json, Ordering::Relaxed);
    LOGGER.journal.store(stderr_is_journal(), Ordering::Relaxed);
    // Another logger set in this process (a program embedding the daemon) keeps its place.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level.filter());
    if LOGGER.queue.get().is_some() {
        return Ok(());
    }
    let writer = std::thread::Builder::new()
        .name("log".into())
        .spawn(write_loop)
        .map_err(|e| {
            Error::new(
                Code::Internal,
                format!("cannot start the logging thread: {e}"),
            )
        })?;
    let spare = ArrayQueue::new(LOG_QUEUE_RECORDS);
    // Buffers ready before the first record, so records written while the logging thread
    // lags (a busy machine) find one instead of allocating on a shard.
    for _ in 0..LOG_SPARE_RECORDS {
        let _ = spare.push(Vec::with_capacity(LOG_RECORD_INITIAL_BYTES));
    }
    let _ = LOGGER.queue.set(Queue {
        lines: ArrayQueue::new(LOG_QUEUE_RECORDS),
        spare,
        pending: AtomicU64::new(0),
        writer: writer.thread().clone(),
        sleeping: AtomicBool::new(false),
    });
    writer.thread().unpark();
    Ok(())
}

/// Records dropped because the queue was full, since the process started.
pub fn dropped() -> u64 {
    LOGGER.dropped.load(Ordering::Relaxed)
}

/// Waits (at most [`LOG_FLUSH_WAIT`]) until every queued record is written.
pub fn flush() {
    LOGGER.flush();
}

/// Whether every record handed over has been written (none waits in the queue).
fn drained() -> bool {
    LOGGER
        .queue
        .get()
        .is_none_or(|queue| queue.pending.load(Ordering::Acquire) == 0)
}

/// Writes `message` as an error record at once, on this thread, after what is queued:
/// for the daemon's last words (it could not start, or stopped on an error). When stderr
/// is stuck (the queue did not drain), nothing is written: the write would block the exit,
/// and the exit code says it failed.
pub fn fatal(message: &dyn fmt::Display) {
    flush();
    if !drained() {
        return;
    }
    let args = format_args!("{message}");
    let record = Record::builder()
        .args(args)
        .level(Level::Error)
        .target("ringcryptd")
        .build();
    let mut line = Vec::new();
    format_record(
        &mut line,
        &record,
        LOGGER.json.load(Ordering::Relaxed),
        LOGGER.journal.load(Ordering::Relaxed) || stderr_is_journal(),
    );
    let _ = std::io::stderr().write_all(&line);
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let json = self.json.load(Ordering::Relaxed);
        let journal = self.journal.load(Ordering::Relaxed);
        let Some(queue) = self.queue.get() else {
            // Not started yet (or never): write here, as eprintln! would.
            let mut line = Vec::new();
            format_record(&mut line, record, json, journal);
            let _ = std::io::stderr().write_all(&line);
            return;
        };
        let mut line = queue
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(LOG_RECORD_INITIAL_BYTES));
        line.clear();
        format_record(&mut line, record, json, journal);
        // Counted before it is visible, so `flush` never sees the queue empty too early.
        queue.pending.fetch_add(1, Ordering::AcqRel);
        match queue.lines.push(line) {
            Ok(()) => {
                if queue.sleeping.swap(false, Ordering::SeqCst) {
                    queue.writer.unpark();
                }
            }
            Err(line) => {
                queue.pending.fetch_sub(1, Ordering::AcqRel);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                crate::daemon::metrics::log_dropped();
                let _ = queue.spare.push(line);
            }
        }
    }

    fn flush(&self) {
        let Some(queue) = self.queue.get() else {
            return;
        };
        let deadline = Instant::now() + LOG_FLUSH_WAIT;
        while queue.pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            queue.writer.unpark();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// The logging thread: writes queued lines to stderr in batches, recycling their buffers,
/// and sleeps when there are none.
fn write_loop() {
    // The queue is set right after this thread starts.
    let queue = loop {
        match LOGGER.queue.get() {
            Some(queue) => break queue,
            None => std::thread::park(),
        }
    };
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut stderr = std::io::stderr();
    loop {
        let mut taken = 0u64;
        while batch.len() < 64 * 1024
            && let Some(line) = queue.lines.pop()
        {
            batch.extend_from_slice(&line);
            taken += 1;
            if line.capacity() <= LOG_RECORD_KEEP_BYTES {
                let _ = queue.spare.push(line);
            }
        }
        if taken == 0 {
            // Announce the sleep, then look once more: a record pushed before the flag was
            // seen is caught here; one pushed after it wakes this thread.
            queue.sleeping.store(true, Ordering::SeqCst);
            if queue.lines.is_empty() {
                std::thread::park_timeout(std::time::Duration::from_secs(1));
            }
            queue.sleeping.store(false, Ordering::SeqCst);
            continue;
        }
        // A stderr that fails (closed) loses the batch: the daemon goes on regardless.
        let _ = stderr.write_all(&batch);
        batch.clear();
        queue.pending.fetch_sub(taken, Ordering::AcqRel);
        // Let a burst gather: one write per millisecond at most, rather than one per record.
        if (taken as usize) < LOG_BATCH_RECORDS {
            std::thread::sleep(LOG_BATCH_LINGER);
        }
    }
}

/// Whether stderr is the journal: `JOURNAL_STREAM` (`DEVICE:INODE`, set by systemd) names
/// the stream stderr is.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match rustix::fs::fstat(std::io::stderr()) {
        // The types of st_dev and st_ino differ between platforms.
        #[allow(clippy::unnecessary_cast)]
        Ok(stat) => stat.st_dev as u64 == dev && stat.st_ino as u64 == ino,
        Err(_) => false,
    }
}

/// The syslog priority of a record, for the journal.
fn priority(record: &Record) -> u8 {
    match record.level() {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info if record.target() == AUDIT => 5,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Formats one record as one line (newline included) into `out`.
pub fn format_record(out: &mut Vec<u8>, record: &Record, json: bool, journal: bool) {
    let mut w = Out(out);
    if journal {
        let _ = write!(w, "<{}>", priority(record));
    }
    if json {
        let _ = w.write_str("{\"ts\":\"");
        timestamp(&mut w, SystemTime::now());
        let _ = write!(
            w,
            "\",\"level\":\"{}\",\"target\":",
            level_name(record.level())
        );
        // The audit records, or the daemon's own.
        let target = if record.target() == AUDIT {
            AUDIT
        } else {
            "ringcryptd"
        };
        quoted(&mut w, &target);
        let _ = w.write_str(",\"msg\":");
        quoted(&mut w, record.args());
        let _ = record.key_values().visit(&mut Fields { w: &mut w, json });
        let _ = w.write_str("}\n");
        return;
    }
    if record.target() == AUDIT {
        let _ = write!(w, "{AUDIT}: {}", record.args());
    } else {
        let level = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info => "",
            Level::Debug => "debug: ",
            Level::Trace => "trace: ",
        };
        let _ = write!(w, "ringcryptd: {level}{}", record.args());
    }
    let _ = record.key_values().visit(&mut Fields { w: &mut w, json });
    let _ = w.write_str("\n");
}

/// A level's name in JSON records, as `--log-level` spells it.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// A `fmt::Write` onto a byte buffer.
struct Out<'a>(&'a mut Vec<u8>);

impl fmt::Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Writes what it is given as the inside of a JSON string: quotes, backslashes and control
/// characters escaped.
struct Escaped<'a, 'b>(&'a mut Out<'b>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '"' => self.0.write_str("\\\"")?,
                '\\' => self.0.write_str("\\\\")?,
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c if (c as u32) < 0x20 || c == '\u{7f}' => write!(self.0, "\\u{:04x}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// `"..."`, escaped as JSON (which is also how text records quote a value).
fn quoted(w: &mut Out, value: &dyn fmt::Display) {
    let _ = w.write_str("\"");
    let _ = write!(Escaped(w), "{value}");
    let _ = w.write_str("\"");
}

/// A text value needs no quotes when it is one plain word.
fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@+".contains(&b))
}

/// Writes a record's fields: ` key=value` (a true flag as ` key`, a false one left out) in
/// text, `,"key":value` in JSON.
struct Fields<'a, 'b> {
    w: &'a mut Out<'b>,
    json: bool,
}

impl<'kvs> VisitSource<'kvs> for Fields<'_, '_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        if self.json {
            let _ = self.w.write_str(",");
            quoted(self.w, &key.as_str());
            let _ = self.w.write_str(":");
        } else if let Some(flag) = value.to_bool() {
            if flag {
                let _ = write!(self.w, " {key}");
            }
            return Ok(());
        } else {
            let _ = write!(self.w, " {key}=");
        }
        value.visit(FieldValue {
            w: self.w,
            json: self.json,
        })
    }
}

struct FieldValue<'a, 'b> {
    w: &'a mut Out<'b>,
    json: bool,
}

impl<'v> VisitValue<'v> for FieldValue<'_, '_> {
    fn visit_any(&mut self, value: Value) -> Result<(), log::kv::Error> {
        quoted(self.w, &value);
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), log::kv::Error> {
        let _ = self.w.write_str("null");
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), log::kv::Error> {
        let _ = write!(self.w, "{value}");
        Ok(())
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), log::kv::Error> {
        let _ = write!(self.w, "{value}");
        Ok(())
    }

    fn visit_bool(&mut self, value: bool) -> Result<(), log::kv::Error> {
        let _ = write!(self.w, "{value}");
        Ok(())
    }

    fn visit_str(&mut self, value: &str) -> Result<(), log::kv::Error> {
        if !self.json && is_word(value) {
            let _ = self.w.write_str(value);
        } else {
            quoted(self.w, &value);
        }
        Ok(())
    }
}

/// `2026-12-02T00:42:33.123Z`.
fn timestamp(w: &mut Out, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let _ = write!(
        w,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(json: bool, journal: bool, level: Level, target: &str) -> String {
        let path = std::path::PathBuf::from("/srv/a \"b\".txt");
        let shown = path.display();
        let kvs: [(&str, Value); 6] = [
            ("uid", Value::from(0u32)),
            ("op", Value::from("encrypt")),
            ("fds", Value::from(true)),
            ("recursive", Value::from(false)),
            ("input", Value::from_display(&shown)),
            ("message", Value::from("no such file")),
        ];
        let args = format_args!("refused");
        let record = Record::builder()
            .args(args)
            .level(level)
            .target(target)
            .key_values(&kvs)
            .build();
        let mut out = Vec::new();
        format_record(&mut out, &record, json, journal);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_records_keep_the_audit_layout() {
        assert_eq!(
            line(false, false, Level::Warn, AUDIT),
            "audit: refused uid=0 op=encrypt fds input=\"/srv/a \\\"b\\\".txt\" \
             message=\"no such file\"\n"
        );
        assert_eq!(
            line(false, false, Level::Warn, "ringcryptd"),
            "ringcryptd: warning: refused uid=0 op=encrypt fds input=\"/srv/a \\\"b\\\".txt\" \
             message=\"no such file\"\n"
        );
    }

    #[test]
    fn journal_lines_start_with_their_priority() {
        for (level, target, prefix) in [
            (Level::Error, "ringcryptd", "<3>"),
            (Level::Warn, AUDIT, "<4>"),
            (Level::Info, AUDIT, "<5>"),
            (Level::Info, "ringcryptd", "<6>"),
            (Level::Debug, "ringcryptd", "<7>"),
            (Level::Trace, "ringcryptd", "<7>"),
        ] {
            for json in [false, true] {
                let text = line(json, true, level, target);
                assert!(text.starts_with(prefix), "{level} {target}: {text}");
                assert!(!line(json, false, level, target).starts_with('<'));
            }
        }
    }

    #[test]
    fn json_records_parse_with_every_field() {
        let text = line(true, false, Level::Warn, AUDIT);
        let value: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(value["level"], "warn");
        assert_eq!(value["target"], "audit");
        assert_eq!(value["msg"], "refused");
        assert_eq!(value["uid"], 0);
        assert_eq!(value["fds"], true);
        assert_eq!(value["recursive"], false);
        assert_eq!(value["input"], "/srv/a \"b\".txt");
        assert_eq!(value["message"], "no such file");
        let ts = value["ts"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-12-02T00:42:33.123Z".len(), "{ts}");
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let mut out = Vec::new();
        let at = UNIX_EPOCH + std::time::Duration::from_millis(1_709_210_096_789);
        timestamp(&mut Out(&mut out), at);
        assert_eq!(String::from_utf8(out).unwrap(), "2024-02-29T12:34:56.789Z");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
