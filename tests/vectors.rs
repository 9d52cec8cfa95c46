//! Runs the test-vector kit in `tests/vectors/kit/` (made by an independent Python
//! implementation, see `tests/vectors/README.md`) through the real decrypt path: each body is
//! written to a file and decrypted with `offline::decrypt` into an empty directory.
//!
//! For every file: the verdict equals its `expect:` line; a failure leaves the output
//! directory empty (no plaintext under the output name, no temp file); a success gives the
//! stated plaintext. For ringcrypt successes, sealing that plaintext with the stated key, salt
//! and chunk size reproduces the file byte for byte (golden files).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ringcrypt::format::Sealer;
use ringcrypt::keys::{KeyMaterial, KeyRing};
use ringcrypt::offline::{self, Format, Job};
use ringcrypt::output::Durability;
use ringcrypt::stream::SealWriter;

struct Case {
    name: String,
    fields: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn kit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn ring() -> KeyRing {
    let text = std::fs::read_to_string(kit_dir().join("keyring.toml")).unwrap();
    KeyRing::parse(&text, "tests/vectors/keyring.toml").unwrap()
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(kit_dir().join("kit")).unwrap() {
        let entry = entry.unwrap();
        let raw = std::fs::read(entry.path()).unwrap();
        let split = raw
            .windows(2)
            .position(|w| w == b"\n\n")
            .unwrap_or_else(|| panic!("{:?}: no blank line after the header", entry.path()));
        let head = std::str::from_utf8(&raw[..split]).unwrap();
        let fields = head
            .lines()
            .map(|line| {
                let (key, value) = line.split_once(": ").expect("`field: value` header line");
                (key.to_string(), value.to_string())
            })
            .collect();
        cases.push(Case {
            name: entry.file_name().to_string_lossy().into_owned(),
            fields,
            body: raw[split + 2..].to_vec(),
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn plaintext_of(case: &Case) -> Vec<u8> {
    let spec = &case.fields["plaintext"];
    let len = spec
        .strip_prefix("pattern ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}: bad plaintext spec {spec:?}", case.name));
    pattern(len)
}

fn hex32(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

#[test]
fn the_kit_is_large_enough_to_mean_something() {
    let cases = cases();
    let failing = cases
        .iter()
        .filter(|c| c.fields["expect"] != "success")
        .count();
    assert!(failing >= 40, "only {failing} malformed files");
    assert!(
        cases.len() - failing >= 20,
        "only {} valid files",
        cases.len() - failing
    );
}

#[test]
fn every_kit_file_gets_its_expected_verdict_through_the_decrypt_path() {
    let ring = ring();
    let scratch = tempfile::tempdir().unwrap();
    let mut mismatches = Vec::new();
    for case in cases() {
        let input = scratch.path().join(format!("{}.in", case.name));
        std::fs::write(&input, &case.body).unwrap();
        let out_dir = scratch.path().join(format!("{}.out", case.name));
        std::fs::create_dir(&out_dir).unwrap();
        let output = out_dir.join("plain");
        let key = case.fields.get("key").map(String::as_str);
        let job = Job {
            input: &input,
            output: &output,
            // ringcrypt files name their key; openssl files need the passphrase entry.
            key: (case.fields["format"] == "openssl")
                .then_some(key)
                .flatten(),
            format: Format::Ringcrypt,
            chunk_log2: 16,
            overwrite: false,
            durability: Durability::None,
        };
        let expect = case.fields["expect"].as_str();
        let verdict = match offline::decrypt(&ring, &job) {
            Ok(outcome) => {
                let plain = std::fs::read(&output).unwrap();
                assert_eq!(plain, plaintext_of(&case), "{}: wrong plaintext", case.name);
                assert_eq!(outcome.bytes_out, plain.len() as u64, "{}", case.name);
                assert_eq!(
                    outcome.format.as_str(),
                    case.fields["format"],
                    "{}",
                    case.name
                );
                "success".to_string()
            }
            Err(err) => {
                let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
                assert!(left.is_empty(), "{}: failure left {left:?}", case.name);
                assert!(!err.message.is_empty(), "{}: empty message", case.name);
                err.code.as_str().to_string()
            }
        };
        // The input is never modified.
        assert_eq!(
            std::fs::read(&input).unwrap(),
            case.body,
            "{}: input changed",
            case.name
        );
        if verdict != expect {
            mismatches.push(format!("{}: expected {expect}, got {verdict}", case.name));
        }
    }
    assert!(
        mismatches.is_empty(),
        "verdict mismatches:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn golden_files_are_reproduced_byte_for_byte() {
    let ring = ring();
    let mut checked = 0;
    for case in cases() {
        if case.fields["expect"] != "success" || case.fields["format"] != "ringcrypt" {
            continue;
        }
        let entry = ring.by_name(&case.fields["key"]).unwrap();
        let KeyMaterial::Secret(master) = &entry.material else {
            panic!("{}: not a ringcrypt key", case.name);
        };
        let chunk_log2: u8 = case.fields["chunk_log2"].parse().unwrap();
        let salt = hex32(&case.fields["salt"]);
        let mut writer =
            SealWriter::new(Sealer::new(master.bytes(), chunk_log2, salt), Vec::new()).unwrap();
        writer.write_all(&plaintext_of(&case)).unwrap();
        let (sealed, _) = writer.finish().unwrap();
        assert!(
            sealed == case.body,
            "{}: sealing does not reproduce the golden file",
            case.name
        );
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} golden files");
}
