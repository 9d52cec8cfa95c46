//! `skip_existing` on single files: the daemon keeps an existing output only when it is what
//! the job would make (its header and final record verify; for a rewrap, under the default
//! key; for a decrypt, a regular file), and otherwise replaces it atomically. The check reads
//! through the shard's reactor like every op, as the caller.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::harness::*;
use crate::support::*;
use serde_json::{Value, json};

/// One file job with `skip_existing`, to its final reply (which must be `done`).
fn skip_job(d: &Daemon, op: &str, input: &Path, output: &Path, key: Option<&str>) -> Value {
    let mut request = with(file_req(op, input, output), json!({"skip_existing": true}));
    if let Some(key) = key {
        request["key"] = json!(key);
    }
    let end = d.client().job(&request).pop().expect("a final reply");
    assert_eq!(end["type"], "done", "{op} {}: {end}", output.display());
    end
}

fn skipped(end: &Value) -> bool {
    end["files_skipped"] == 1 && end["files_ok"] == 0
}

/// (dev, inode, mtime in ns) of a path, without following a link.
fn identity(path: &Path) -> (u64, u64, i64) {
    let meta = fs::symlink_metadata(path).unwrap();
    (
        meta.dev(),
        meta.ino(),
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    )
}

/// Intact: an output that verifies is never rewritten (same inode, same bytes); one that
/// does not (a flipped bit in its final record, foreign bytes, a symlink, another key for
/// a rewrap) is replaced by one that decrypts to the input, and a symlink's target is never
/// written through.
fn skip_existing_keeps_only_what_verifies(backend: &'static str) {
    let d = rd(backend).start();
    let ring = d.ring();
    let plain: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let input = d.root.join("p.bin");
    fs::write(&input, &plain).unwrap();
    let out = d.root.join("p.bin.rc");
    let scratch = d.root.join("scratch");

    let first = skip_job(&d, "encrypt", &input, &out, None);
    assert!(!skipped(&first), "no output yet: {first}");
    let (bytes, before) = (fs::read(&out).unwrap(), identity(&out));

    let again = skip_job(&d, "encrypt", &input, &out, None);
    assert!(skipped(&again), "a verified output is kept: {again}");
    assert_eq!(identity(&out), before, "the kept output was touched");
    assert_eq!(fs::read(&out).unwrap(), bytes);

    // A flipped bit in the final record's tag: replaced.
    let mut damaged = bytes.clone();
    *damaged.last_mut().unwrap() ^= 1;
    fs::write(&out, &damaged).unwrap();
    let end = skip_job(&d, "encrypt", &input, &out, None);
    assert!(!skipped(&end), "a damaged output was kept: {end}");
    assert_decrypts_to(&ring, &out, &plain, &scratch);

    // Foreign bytes, too short for a header: replaced.
    fs::write(&out, b"not ours").unwrap();
    let end = skip_job(&d, "encrypt", &input, &out, None);
    assert!(!skipped(&end), "a foreign output was kept: {end}");
    assert_decrypts_to(&ring, &out, &plain, &scratch);

    // A symlink to a valid sealed file: the check does not follow it, and the replacement
    // takes the link's place without writing through it.
    let target = d.root.join("target.rc");
    fs::rename(&out, &target).unwrap();
    let target_bytes = fs::read(&target).unwrap();
    std::os::unix::fs::symlink(&target, &out).unwrap();
    let end = skip_job(&d, "encrypt", &input, &out, None);
    assert!(
        !skipped(&end),
        "a symlink was taken for a verified output: {end}"
    );
    assert!(fs::symlink_metadata(&out).unwrap().is_file());
    assert_eq!(
        fs::read(&target).unwrap(),
        target_bytes,
        "written through a link"
    );
    assert_decrypts_to(&ring, &out, &plain, &scratch);

    // Rewrap: an output under k1 (not the default) is redone under k2; under k2 it is kept.
    let rewrapped = d.root.join("p.rw.rc");
    skip_job(&d, "encrypt", &input, &rewrapped, Some("k1"));
    assert_eq!(key_id_of(&rewrapped), ring_id(&ring, "k1"));
    let end = skip_job(&d, "rewrap", &out, &rewrapped, None);
    assert!(
        !skipped(&end),
        "an output under a non-default key was kept: {end}"
    );
    assert_eq!(key_id_of(&rewrapped), ring_id(&ring, "k2"));
    let kept = identity(&rewrapped);
    let end = skip_job(&d, "rewrap", &out, &rewrapped, None);
    assert!(
        skipped(&end),
        "an output under the default key was redone: {end}"
    );
    assert_eq!(identity(&rewrapped), kept);

    // Decrypt: any regular file there is kept as it is.
    let decrypted = d.root.join("p.out");
    fs::write(&decrypted, b"keep me").unwrap();
    let end = skip_job(&d, "decrypt", &out, &decrypted, None);
    assert!(skipped(&end), "{end}");
    assert_eq!(fs::read(&decrypted).unwrap(), b"keep me");
}

/// Intact: an output gets its input's permission bits exactly, whether the daemon creates
/// it with them (bits its umask leaves whole) or sets them afterwards (bits the umask would
/// take away); an existing output is never replaced without `overwrite` (found by the link,
/// with no look-up before the work), and an output named as its input is refused up front.
fn outputs_keep_the_input_mode_and_never_replace(backend: &'static str) {
    use std::os::unix::fs::PermissionsExt;
    let d = rd(backend).start();
    for (i, mode) in [0o600, 0o640, 0o604, 0o666, 0o777, 0o400]
        .into_iter()
        .enumerate()
    {
        let input = d.root.join(format!("m{i}.bin"));
        fs::write(&input, b"mode").unwrap();
        fs::set_permissions(&input, fs::Permissions::from_mode(mode)).unwrap();
        let out = d.root.join(format!("m{i}.rc"));
        let end = d
            .client()
            .job(&file_req("encrypt", &input, &out))
            .pop()
            .unwrap();
        assert_eq!(end["type"], "done", "{mode:o}: {end}");
        let got = fs::metadata(&out).unwrap().permissions().mode() & 0o7777;
        assert_eq!(got, mode, "{mode:o}: the output has mode {got:o}");
    }
    let input = d.root.join("m0.bin");
    let taken = d.root.join("taken.rc");
    fs::write(&taken, b"someone else's").unwrap();
    let end = d
        .client()
        .job(&file_req("encrypt", &input, &taken))
        .pop()
        .unwrap();
    assert_eq!(code(&end), "exists", "{end}");
    assert_eq!(fs::read(&taken).unwrap(), b"someone else's");
    let end = d
        .client()
        .job(&file_req("encrypt", &input, &input))
        .pop()
        .unwrap();
    assert_eq!(code(&end), "bad_request", "{end}");
    assert!(
        end["message"]
            .as_str()
            .unwrap_or("")
            .contains("is the input itself"),
        "{end}"
    );
    assert_eq!(fs::read(&input).unwrap(), b"mode", "the input changed");
    assert!(temp_files(&d.root).is_empty(), "temp files left");
}

both_backends!(
    skip_existing_keeps_only_what_verifies,
    outputs_keep_the_input_mode_and_never_replace,
);
