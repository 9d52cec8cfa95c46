//! The checks: what a tree's outputs must be, that the daemon settles back to its baseline
//! (descriptors, memory), the audit of every connection's ledger, and the daemon's log.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use ringcrypt::format::sealed_len;
use ringcrypt::keys::KeyRing;

use crate::ledger::{Sent, reply_kind};
use crate::state::{Soak, bump, sealed_name};
use crate::support::{Daemon, TEMP_PREFIX, open_fds, rss_kib, temp_files};
use crate::{RSS_SLACK_KIB, SETTLE_WITHIN};

/// Waits (bounded) for the descriptor count to come back to `base`, then checks it and the
/// resident memory; returns what it saw.
pub(crate) fn check_settled(s: &Soak, pid: u32, base: (usize, u64), when: &str) -> (usize, u64) {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut fds = open_fds(pid).unwrap_or(usize::MAX);
    while fds > base.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        fds = open_fds(pid).unwrap_or(usize::MAX);
    }
    let rss = rss_kib(pid).unwrap_or(u64::MAX);
    if fds > base.0 {
        let list: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| fs::read_link(e.path()).ok())
                    .map(|t| t.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        s.violation(format!(
            "{when}: the daemon holds {fds} descriptors, {} at the baseline \
             ({SETTLE_WITHIN:?} after the load): {list:?}",
            base.0
        ));
    }
    if rss > base.1 + RSS_SLACK_KIB {
        s.violation(format!(
            "{when}: the daemon's RSS is {rss} KiB, more than {} KiB over the baseline's {} KiB",
            RSS_SLACK_KIB, base.1
        ));
    }
    (fds, rss)
}

/// Decrypts `sealed` with the library into memory and compares it with `plain`.
pub(crate) fn decrypts_to(ring: &KeyRing, sealed: &Path, plain: &[u8]) -> Result<(), String> {
    let data = fs::read(sealed).map_err(|e| format!("{}: {e}", sealed.display()))?;
    let mut out = Vec::with_capacity(plain.len());
    ringcrypt::stream::open(&mut &data[..], data.len() as u64, ring, &mut out)
        .map_err(|e| format!("{} does not decrypt: {e}", sealed.display()))?;
    if out != plain {
        return Err(format!(
            "{} decrypts to {} bytes that differ from its {}-byte input",
            sealed.display(),
            out.len(),
            plain.len()
        ));
    }
    Ok(())
}

/// The offline API's check of a sealed output: right size, header, key, header tag and the
/// final record's tag.
pub(crate) fn sealed_ok(ring: &KeyRing, sealed: &Path, plain_len: usize) -> Result<(), String> {
    let len = fs::symlink_metadata(sealed)
        .map_err(|e| format!("{}: {e}", sealed.display()))?
        .len();
    let want = sealed_len(plain_len as u64, 16);
    if len != want {
        return Err(format!(
            "{} is {len} bytes; a sealed {plain_len}-byte file is {want}",
            sealed.display()
        ));
    }
    ringcrypt::offline::verify_sealed(ring, sealed)
        .map(|_| ())
        .map_err(|e| format!("{} does not verify: {e}", sealed.display()))
}

/// Every entry under `dir` but directories (regular files, and anything else that should not
/// be there), relative to it; at most 100,000 directories are read.
pub(crate) fn entries_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = 0;
    while let Some(d) = stack.pop() {
        visited += 1;
        if visited > 100_000 {
            break;
        }
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else {
                found.push(entry.path().strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    found
}

/// How a tree's outputs are checked.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum TreeCheck {
    /// A finished run during the load: complete; every output the right size and verifying;
    /// one file in `n` decrypted in full.
    Sample(usize),
    /// A cancelled run: whatever exists is whole (right size, verifies); nothing else.
    Partial,
    /// The end: complete, and every output decrypted in full and compared.
    Full,
}

/// Checks tree `k`'s outputs under `out`; returns the problems found.
pub(crate) fn check_tree(
    s: &Soak,
    k: usize,
    out: &Path,
    how: TreeCheck,
    salt: usize,
) -> Vec<String> {
    let src = &s.trees[k];
    let ring = s.ring_now();
    let mut problems = Vec::new();
    let expected: HashMap<PathBuf, (PathBuf, usize)> = src
        .files
        .iter()
        .map(|(rel, size)| (sealed_name(rel), (rel.clone(), *size)))
        .collect();
    let present = entries_under(out);
    for rel in &present {
        let name = rel.file_name().unwrap().to_string_lossy();
        if name.starts_with(TEMP_PREFIX) {
            problems.push(format!(
                "temp file {} in a tree output",
                out.join(rel).display()
            ));
        } else if !expected.contains_key(rel) {
            problems.push(format!(
                "unexpected file {} in a tree output",
                out.join(rel).display()
            ));
        }
    }
    let present: HashSet<PathBuf> = present.into_iter().collect();
    let mut checked = 0;
    let mut decrypted = 0;
    for (i, (rel, size)) in src.files.iter().enumerate() {
        let sealed = out.join(sealed_name(rel));
        if !present.contains(&sealed_name(rel)) {
            if how != TreeCheck::Partial {
                problems.push(format!(
                    "{} is missing from a finished tree",
                    sealed.display()
                ));
            }
            continue;
        }
        let full = match how {
            TreeCheck::Full => true,
            TreeCheck::Sample(n) => (i + salt).is_multiple_of(n),
            TreeCheck::Partial => (i + salt).is_multiple_of(16),
        };
        let result = sealed_ok(&ring, &sealed, *size).and_then(|()| {
            if full {
                decrypted += 1;
                decrypts_to(&ring, &sealed, &fs::read(src.dir.join(rel)).unwrap())
            } else {
                Ok(())
            }
        });
        checked += 1;
        if let Err(e) = result {
            problems.push(e);
        }
    }
    bump(&s.c.tree_files_checked, checked);
    bump(&s.c.tree_files_decrypted, decrypted);
    problems
}

#[derive(Default)]
pub(crate) struct Tally {
    /// Final replies by kind (`done`, `error busy`, `pong`, ...).
    pub(crate) finals: BTreeMap<String, u64>,
    pub(crate) requests: u64,
    pub(crate) requests_after_sigterm: u64,
    /// Requests written in full that got no final reply (each one is a violation).
    pub(crate) unanswered: u64,
    pub(crate) idless_sent: u64,
    pub(crate) idless_errors: u64,
    pub(crate) connections: u64,
    pub(crate) resets: u64,
}

/// Applies the one-final-reply rules to every connection's ledger.
pub(crate) fn audit(s: &Soak) -> Tally {
    let sigterm_at = *s.sigterm_at.lock().unwrap();
    let mut tally = Tally::default();
    let ledgers = s.ledgers.lock().unwrap().clone();
    for ledger in ledgers {
        let sigterm = if ledger.shutdown_rule {
            sigterm_at
        } else {
            None
        };
        let st = ledger.state.lock().unwrap();
        let name = &ledger.name;
        tally.connections += 1;
        tally.resets += st.reset as u64;
        if !st.eof {
            s.violation(format!("{name}: the reader never saw the connection end"));
        }
        if let Some(e) = &st.read_error {
            s.violation(format!("{name}: read error: {e}"));
        }
        for stray in st.strays.iter().take(5) {
            s.violation(format!("{name}: {stray}"));
        }
        if st.strays.len() > 5 {
            s.violation(format!(
                "{name}: {} more stray replies",
                st.strays.len() - 5
            ));
        }
        let since_sigterm = |at: Instant| match sigterm {
            Some(t) if at >= t => format!("{:?} after the SIGTERM", at - t),
            Some(t) => format!("{:?} before the SIGTERM", t - at),
            None => "no SIGTERM".to_string(),
        };
        let mut missing = Vec::new();
        for id in &st.order {
            let track = &st.tracks[id];
            let written = match track.sent {
                Sent::At(at) => Some(at),
                Sent::Failed | Sent::Writing => None,
            };
            tally.requests += written.is_some() as u64;
            let after_sigterm = written.zip(sigterm).is_some_and(|(at, t)| at >= t);
            tally.requests_after_sigterm += after_sigterm as u64;
            for end in &track.finals {
                *tally.finals.entry(reply_kind(end)).or_default() += 1;
            }
            match (track.finals.len(), written) {
                (0, Some(at)) => missing.push(format!(
                    "{id} ({}, written {})",
                    track.what,
                    since_sigterm(at)
                )),
                (0, None) | (1, _) => {}
                (n, _) => s.violation(format!(
                    "{name}: {id} ({}) got {n} final replies: {:?}",
                    track.what, track.finals
                )),
            }
            if track.accepted > 1 {
                s.violation(format!(
                    "{name}: {id} was accepted {} times",
                    track.accepted
                ));
            }
            if !track.after_final.is_empty() {
                s.violation(format!(
                    "{name}: {id} got replies after its final one: {:?}",
                    track.after_final
                ));
            }
        }
        tally.unanswered += missing.len() as u64;
        if !missing.is_empty() {
            s.violation(format!(
                "{name}: {} request(s) written in full got no final reply before the \
                 connection {}: {}{}",
                missing.len(),
                match (st.closed_by_test, st.reset) {
                    (true, _) => "was closed by the test",
                    (false, true) => "was reset by the daemon (ECONNRESET: our bytes unread)",
                    (false, false) => "was closed by the daemon (EOF)",
                },
                missing[..missing.len().min(8)].join(", "),
                if missing.len() > 8 { ", ..." } else { "" }
            ));
        }
        tally.idless_sent += st.idless_sent.len() as u64;
        tally.idless_errors += st.idless_replies.len() as u64;
        let mut want: BTreeMap<String, usize> = BTreeMap::new();
        for (_, code) in &st.idless_sent {
            *want.entry(format!("error {code}")).or_default() += 1;
        }
        let mut got: BTreeMap<String, usize> = BTreeMap::new();
        for reply in &st.idless_replies {
            *tally.finals.entry(reply_kind(reply)).or_default() += 1;
            *got.entry(reply_kind(reply)).or_default() += 1;
        }
        let mut may: BTreeMap<String, usize> = BTreeMap::new();
        for code in &st.idless_failed {
            *may.entry(format!("error {code}")).or_default() += 1;
        }
        let within = want.keys().chain(got.keys()).all(|kind| {
            let (w, g) = (
                want.get(kind).copied().unwrap_or(0),
                got.get(kind).copied().unwrap_or(0),
            );
            w <= g && g <= w + may.get(kind).copied().unwrap_or(0)
        });
        if !within {
            // The replies of kinds that came more often than their lines, to show what.
            let surplus: Vec<String> = st
                .idless_replies
                .iter()
                .filter(|r| got[&reply_kind(r)] > want.get(&reply_kind(r)).copied().unwrap_or(0))
                .rev()
                .take(3)
                .map(|r| r.to_string())
                .collect();
            s.violation(format!(
                "{name}: lines without an id must get one error each: sent {want:?} \
                 (the last written {}; cut short by a failed write: {may:?}), got {got:?}; \
                 last replies of a kind in surplus: {surplus:?}",
                st.idless_sent
                    .last()
                    .map_or("-".to_string(), |(at, _)| since_sigterm(*at))
            ));
        }
    }
    tally
}

/// A daemon's log (`log`, its text) must hold no panic.
pub(crate) fn check_log(s: &Soak, log: &str, which: &str) {
    for needle in [
        "panicked",
        "stack overflow",
        "fatal runtime error",
        "RUST_BACKTRACE",
    ] {
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            s.violation(format!("{which} log: {line}"));
        }
    }
}

pub(crate) fn check_no_temp_files(s: &Soak, when: &str) {
    let left = temp_files(&s.dir);
    if !left.is_empty() {
        s.violation(format!("{when}: temp files remain: {left:?}"));
    }
}

/// The daemon's log: its last `lines` lines that are not audit lines, after the last three
/// audit lines (what the daemon was last asked to do).
pub(crate) fn log_tail(d: &Daemon, lines: usize) -> String {
    let text = d.log_text();
    let audit: Vec<&str> = text.lines().filter(|l| l.starts_with("audit:")).collect();
    let other: Vec<&str> = text.lines().filter(|l| !l.starts_with("audit:")).collect();
    let mut tail: Vec<&str> = audit[audit.len().saturating_sub(3)..].to_vec();
    tail.extend(&other[other.len().saturating_sub(lines)..]);
    tail.join("\n")
}

pub(crate) fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!(
            "killed by signal {signal}{}",
            if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            }
        ),
        _ => format!("{status}"),
    }
}
