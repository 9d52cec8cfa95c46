//! Replays the fuzz corpus and crash artifacts (`fuzz/corpus/TARGET/`,
//! `fuzz/artifacts/TARGET/`) through the fuzz targets' checks, on stable Rust and without
//! libFuzzer, so every committed input stays a regression test in `cargo test`.
//!
//! The checks live in `fuzz/checks.rs` and are compiled into both this test and the fuzz
//! targets, so the invariants cannot drift apart. See `fuzz/README.md` for running the fuzzers.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../fuzz/checks.rs"]
mod checks;

/// The fuzz targets; every directory under `fuzz/corpus/` and `fuzz/artifacts/` must be one.
const TARGETS: [&str; 4] = ["header", "open", "request", "keyring"];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Crash artifacts that reproduce a bug not yet fixed in `src/` (each is described under
/// "Findings" in `fuzz/README.md`). They are replayed too, and must still break their
/// invariant: when a fix makes one pass, this test fails until its entry is removed, so the
/// artifact becomes an ordinary regression test.
const KNOWN_OPEN: &[&str] = &[
    // Empty: every finding so far is fixed, and its input is a regression test:
    // request crash-9827… (a float id read back one ULP off: serde_json now parses floats
    // with `float_roundtrip`), keyring crash-552a… and leak-*.toml (secrets pasted into
    // `name`, `state` or `default` were echoed: key ring messages now redact hex runs).
];

/// Every file in `fuzz/corpus/TARGET/` and `fuzz/artifacts/TARGET/` (either may be absent).
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["corpus", "artifacts"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("read fuzz directory entry").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs `check` on every input of `target`, and names every input that panicked (or, for a
/// [`KNOWN_OPEN`] artifact, that no longer does).
fn replay(target: &str, check: impl Fn(&[u8])) -> usize {
    let files = inputs(target);
    let mut failed = Vec::new();
    for path in &files {
        let data = fs::read(path).expect("read fuzz input");
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let known = KNOWN_OPEN.contains(&name);
        let panicked = panic::catch_unwind(AssertUnwindSafe(|| check(&data))).is_err();
        if panicked && !known {
            failed.push(path.display().to_string());
        } else if known && !panicked {
            failed.push(format!(
                "{} (listed in KNOWN_OPEN but passes now: remove it from the list)",
                path.display()
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs broke an invariant:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
    files.len()
}

#[test]
fn header_corpus() {
    assert!(
        replay("header", checks::check_header) > 0,
        "empty header corpus"
    );
}

#[test]
fn open_corpus() {
    let ring = checks::test_ring();
    let opened = std::sync::atomic::AtomicUsize::new(0);
    let count = replay("open", |data| {
        if checks::check_open(&ring, data) {
            opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    assert!(count > 0, "empty open corpus");
    // The kit's success vectors are in the corpus: the success-path checks must run.
    assert!(opened.into_inner() > 0, "no open corpus input decrypts");
}

#[test]
fn request_corpus() {
    assert!(
        replay("request", checks::check_request) > 0,
        "empty request corpus"
    );
}

#[test]
fn keyring_corpus() {
    let count = replay("keyring", |data| {
        // The target feeds only UTF-8 to the parser, as `KeyRing::load` does.
        if let Ok(text) = std::str::from_utf8(data) {
            checks::check_keyring(text);
        }
    });
    assert!(count > 0, "empty keyring corpus");
}

/// A corpus or artifact directory that no test above replays is a target left unchecked.
#[test]
fn every_input_directory_is_a_target() {
    for kind in ["corpus", "artifacts"] {
        let Ok(entries) = fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for entry in entries {
            let entry = entry.expect("read fuzz directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() {
                assert!(
                    TARGETS.contains(&name.as_str()),
                    "fuzz/{kind}/{name} is not a target"
                );
            }
        }
    }
}
