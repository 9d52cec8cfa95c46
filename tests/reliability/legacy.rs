//! openssl-format inputs (`Salted__`, made by the real `openssl enc -aes-256-cbc -pbkdf2`)
//! decrypted and rewrapped by the daemon with the passphrase entry the request names: sizes
//! around the block and chunk edges, a file large enough to be split (it is not: a CBC chain
//! has one order), a wrong passphrase, cut files, and a tree mixing both formats.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::harness::*;
use crate::support::*;
use serde_json::{Value, json};

const PASS: &str = "correct horse battery";
const ITER: &str = "1000";

/// A ring with two secret keys (`k2` the default) and the passphrase entry `legacy`.
fn legacy_ring() -> String {
    format!(
        "default = \"k2\"\n{}{}[[key]]\nname = \"legacy\"\npassphrase = \"{PASS}\"\niter = {ITER}\nstate = \"decrypt-only\"\n\n",
        keygen("k1"),
        keygen("k2")
    )
}

/// `openssl enc -aes-256-cbc -pbkdf2 -iter ITER` of `plain` into `out` with `pass`.
fn openssl_enc(plain: &Path, out: &Path, pass: &str) {
    let pass = format!("pass:{pass}");
    let args = [
        "enc",
        "-aes-256-cbc",
        "-pbkdf2",
        "-iter",
        ITER,
        "-pass",
        &pass,
        "-in",
        p(plain),
        "-out",
        p(out),
    ];
    let done = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI runs (installed by .ci/run)");
    assert!(done.status.success(), "openssl {args:?}: {done:?}");
}

/// [`openssl_enc`] under `other`, a passphrase that is not [`PASS`], made again (a new
/// random salt) until opening it with [`PASS`] fails at the padding, as the offline client
/// finds (a wrong key passes the padding check about once in 256 files).
fn enc_under_other_passphrase(plain: &Path, out: &Path, other: &str) {
    for _ in 0..20 {
        openssl_enc(plain, out, other);
        let file = fs::read(out).unwrap();
        let opened = ringcrypt::openssl::decrypt(&mut &file[..], &mut std::io::sink(), PASS, 1000);
        if opened.is_err_and(|e| e.code == ringcrypt::Code::AuthFailed) {
            return;
        }
    }
    panic!("20 files under another passphrase all had valid padding under {PASS:?}");
}

fn job(d: &Daemon, op: &str, input: &Path, output: &Path, fields: Value) -> Value {
    d.client()
        .job(&with(file_req(op, input, output), fields))
        .pop()
        .expect("a final reply")
}

/// No temp file of an interrupted or failed job is left in `dir`.
fn no_temp_files(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            !name.to_string_lossy().starts_with(".ringcrypt-tmp"),
            "a temp file was left: {name:?}"
        );
    }
}

/// Intact: every size around the block (16), chunk (64 KiB) and batch (8 chunks) edges,
/// and a 3 MiB file past the split threshold, made by the real openssl CLI, decrypts through
/// the daemon to exactly its plaintext and rewraps into a ringcrypt file that decrypts to it
/// and verifies; the openssl file is never changed.
fn openssl_files_decrypt_and_rewrap_at_every_edge(backend: &'static str) {
    let d = rd(backend)
        .ring(legacy_ring())
        .args(&["--split-min-mib", "1"])
        .start();
    let ring = d.ring();
    let c = 65_536usize;
    let sizes = [
        0,
        1,
        15,
        16,
        17,
        c - 16,
        c - 1,
        c,
        c + 1,
        8 * c - 1,
        8 * c,
        8 * c + 16,
        9 * c + 100,
        3 * 1024 * 1024 + 5,
    ];
    for (i, len) in sizes.into_iter().enumerate() {
        let plain_path = d.root.join(format!("p{i}"));
        let plain = bytes(len, 70 + i as u64);
        fs::write(&plain_path, &plain).unwrap();
        let legacy = d.root.join(format!("l{i}.enc"));
        openssl_enc(&plain_path, &legacy, PASS);
        let before = fs::read(&legacy).unwrap();

        let out = d.root.join(format!("l{i}.out"));
        // The ring has one passphrase entry: naming it is optional.
        let key = if i % 2 == 0 {
            json!({"key": "legacy"})
        } else {
            json!({})
        };
        let end = job(&d, "decrypt", &legacy, &out, key.clone());
        assert_eq!(end["type"], "done", "decrypt of {len} bytes: {end}");
        assert_eq!(end["bytes_out"], len as u64, "{end}");
        assert_eq!(end["bytes_in"], before.len() as u64, "{end}");
        assert!(
            fs::read(&out).unwrap() == plain,
            "decrypt of {len} bytes differs"
        );

        let sealed = d.root.join(format!("l{i}.rcrypt"));
        let end = job(&d, "rewrap", &legacy, &sealed, key);
        assert_eq!(end["type"], "done", "rewrap of {len} bytes: {end}");
        assert_decrypts_to(&ring, &sealed, &plain, &d.scratch().join("check"));
        let verified = d
            .client()
            .job(&json!({"op": "verify", "input": p(&sealed)}))
            .pop()
            .unwrap();
        assert_eq!(verified["type"], "done", "{verified}");
        assert_eq!(verified["bytes_out"], len as u64, "{verified}");
        assert_eq!(
            fs::read(&legacy).unwrap(),
            before,
            "the openssl file changed"
        );
    }
}

/// Intact: a wrong passphrase, a file cut mid-block or by a whole block, a header with no
/// body, and a ring without the named entry each fail with their code (`auth_failed` for
/// bad padding, `bad_format` for a body that is not whole blocks, `unknown_key`); no output
/// and no temp file appears, and the input is unchanged.
fn bad_openssl_inputs_fail_and_leave_nothing(backend: &'static str) {
    let d = rd(backend).ring(legacy_ring()).start();
    let dir = d.root.join("bad");
    fs::create_dir(&dir).unwrap();
    // Plaintext bytes 'A' (0x41): a last block taken from the middle never has valid padding.
    let plain_path = d.root.join("plain");
    fs::write(&plain_path, vec![b'A'; 3 * 65_536 + 40]).unwrap();
    let wrong = d.root.join("wrong.enc");
    enc_under_other_passphrase(&plain_path, &wrong, "not the passphrase");
    let good = d.root.join("good.enc");
    openssl_enc(&plain_path, &good, PASS);
    let good_bytes = fs::read(&good).unwrap();
    let n = good_bytes.len();

    let cases: Vec<(&str, Vec<u8>, Value, &str)> = vec![
        (
            "a wrong passphrase",
            fs::read(&wrong).unwrap(),
            json!({}),
            "auth_failed",
        ),
        (
            "cut mid-block",
            good_bytes[..n - 5].to_vec(),
            json!({}),
            "bad_format",
        ),
        (
            "cut by a block",
            good_bytes[..n - 16].to_vec(),
            json!({}),
            "auth_failed",
        ),
        (
            "cut by a chunk",
            good_bytes[..n - 65_536].to_vec(),
            json!({}),
            "auth_failed",
        ),
        (
            "a header only",
            good_bytes[..16].to_vec(),
            json!({}),
            "bad_format",
        ),
        (
            "half a header",
            good_bytes[..12].to_vec(),
            json!({}),
            "bad_format",
        ),
        (
            "no such entry",
            good_bytes.clone(),
            json!({"key": "nope"}),
            "unknown_key",
        ),
    ];
    for (what, content, fields, want) in cases {
        let input = dir.join("in.enc");
        fs::write(&input, &content).unwrap();
        for op in ["decrypt", "rewrap"] {
            let out = dir.join("out");
            let end = job(&d, op, &input, &out, fields.clone());
            assert_eq!(code(&end), want, "{op}, {what}: {end}");
            assert!(!out.exists(), "{op}, {what}: an output appeared");
            no_temp_files(&dir);
            assert_eq!(
                fs::read(&input).unwrap(),
                content,
                "{op}, {what}: input changed"
            );
        }
        let end = d
            .client()
            .job(&json!({"op": "verify", "input": p(&input)}))
            .pop()
            .unwrap();
        assert_eq!(code(&end), "bad_format", "verify of {what}: {end}");
    }
}

/// Intact: a tree mixing ringcrypt files and openssl files (one of them under another
/// passphrase) rewraps into a tree of ringcrypt files that each decrypt to their plaintext;
/// exactly the file under the other passphrase fails (`auth_failed`) and has no output.
fn tree_mixing_both_formats_rewraps(backend: &'static str) {
    let d = rd(backend).ring(legacy_ring()).start();
    let ring = d.ring();
    let src = d.root.join("mixed");
    fs::create_dir_all(src.join("sub")).unwrap();
    let mut want = Vec::new();
    for (i, (rel, kind)) in [
        ("a", "ringcrypt"),
        ("b", "openssl"),
        ("sub/c", "openssl"),
        ("sub/d", "ringcrypt"),
        ("sub/e", "other passphrase"),
    ]
    .into_iter()
    .enumerate()
    {
        let plain = bytes(40_000 * i + 3, 90 + i as u64);
        let plain_path = d.root.join(format!("p{i}"));
        fs::write(&plain_path, &plain).unwrap();
        let at = src.join(rel);
        match kind {
            "ringcrypt" => {
                let end = d.encrypt(&plain_path, &at, json!({}));
                assert_eq!(end["type"], "done", "{end}");
            }
            "openssl" => openssl_enc(&plain_path, &at, PASS),
            _ => enc_under_other_passphrase(&plain_path, &at, "another"),
        }
        want.push((rel, kind, plain));
    }
    let out = d.root.join("rewrapped");
    let request = json!({"op": "rewrap", "input": p(&src), "output": p(&out),
        "recursive": true, "key": "legacy"});
    let replies = d.client().job(&request);
    let end = replies.last().unwrap();
    assert_eq!(end["type"], "done", "{}", brief(&replies));
    assert_eq!(end["files_ok"], 4, "{end}");
    assert_eq!(end["files_failed"], 1, "{end}");
    assert_eq!(end["failures"][0]["path"], p(&src.join("sub/e")), "{end}");
    assert_eq!(end["failures"][0]["code"], "auth_failed", "{end}");
    for (rel, kind, plain) in want {
        let output = out.join(rel);
        if kind == "other passphrase" {
            assert!(!output.exists(), "{rel}: an output appeared");
        } else {
            assert_decrypts_to(&ring, &output, &plain, &d.scratch().join("check"));
        }
    }
    no_temp_files(&out.join("sub"));
}

both_backends!(
    openssl_files_decrypt_and_rewrap_at_every_edge,
    bad_openssl_inputs_fail_and_leave_nothing,
    tree_mixing_both_formats_rewraps,
);
