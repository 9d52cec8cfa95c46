//! Interop with the real `openssl` binary in both directions for the compatibility format.

use super::*;

// ---------------------------------------------------------------------------------------------
// 9. openssl interop
// ---------------------------------------------------------------------------------------------

/// Intact: the `openssl` format is exactly what `openssl enc -aes-256-cbc -pbkdf2 -iter N`
/// reads and writes, both ways, at sizes around the block size; encrypting in it always warns
/// that it is NOT authenticated.
#[test]
fn openssl_format_interoperates_with_the_real_openssl() {
    let dir = tempdir();
    let ring = dir.path().join("keys.toml");
    let pass = "correct horse battery";
    write_private(
        &ring,
        &format!(
            "{}{}",
            key("k", &secret(5), "active"),
            passphrase("legacy", pass, 10_000, "active")
        ),
    );
    let pass_arg = format!("pass:{pass}");
    for len in [0usize, 1, 16, 100_000] {
        let plain = dir.path().join(format!("p{len}"));
        let data = random_bytes(len, 900 + len as u64);
        write_input(&plain, &data);

        // (a) openssl encrypts, ringcrypt decrypts.
        let by_openssl = dir.path().join(format!("e{len}"));
        run_openssl(&[
            "enc",
            "-aes-256-cbc",
            "-pbkdf2",
            "-iter",
            "10000",
            "-pass",
            &pass_arg,
            "-in",
            p(&plain),
            "-out",
            p(&by_openssl),
        ]);
        let x = dir.path().join(format!("x{len}"));
        with_ring(
            &ring,
            &["decrypt", p(&by_openssl), "-o", p(&x), "--key", "legacy"],
        )
        .ok();
        assert!(
            fs::read(&x).unwrap() == data,
            "openssl -> ringcrypt, {len} bytes"
        );

        // (b) ringcrypt encrypts (with a warning), openssl decrypts.
        let by_ringcrypt = dir.path().join(format!("e2-{len}"));
        let run = encrypt_legacy(&ring, &plain, &by_ringcrypt).ok();
        assert!(run.stderr.contains("NOT authenticated"), "{run:#?}");
        let bytes = fs::read(&by_ringcrypt).unwrap();
        assert_eq!(&bytes[..8], b"Salted__");
        assert_eq!(bytes.len() as u64, openssl_size(len as u64));
        let y = dir.path().join(format!("y{len}"));
        run_openssl(&[
            "enc",
            "-d",
            "-aes-256-cbc",
            "-pbkdf2",
            "-iter",
            "10000",
            "-pass",
            &pass_arg,
            "-in",
            p(&by_ringcrypt),
            "-out",
            p(&y),
        ]);
        assert!(
            fs::read(&y).unwrap() == data,
            "ringcrypt -> openssl, {len} bytes"
        );
        assert_eq!(snapshot(&plain).bytes, data);
    }
    // With a single passphrase entry in the ring, --key may be left out.
    let only = dir.path().join("only.toml");
    write_private(&only, &passphrase("legacy", pass, 10_000, "active"));
    let z = dir.path().join("z");
    with_ring(&only, &["decrypt", p(&dir.path().join("e16")), "-o", p(&z)]).ok();
    assert!(fs::read(&z).unwrap() == random_bytes(16, 916));
}

/// Intact: a wrong passphrase gives exit 1 and no output file.
///
/// The openssl format has no MAC, so the only check is the PKCS#7 padding of the last block.
/// Under a wrong key that block decrypts to random bytes, whose padding still looks valid
/// with probability about 1/256 (a final 0x01 byte, or 0x02 0x02, ...): then the wrong
/// passphrase "succeeds" and yields garbage. So each try must either fail cleanly or give
/// bytes that differ from the plaintext, and most (at least one) must fail cleanly.
#[test]
fn a_wrong_openssl_passphrase_fails_cleanly() {
    let dir = tempdir();
    let ring = dir.path().join("keys.toml");
    write_private(
        &ring,
        &passphrase("legacy", "the-wrong-one", 10_000, "active"),
    );
    let mut clean = 0;
    for attempt in 0..6u64 {
        let plain = dir.path().join("plain");
        let data = random_bytes(1000 + attempt as usize * 7, 300 + attempt);
        fs::write(&plain, &data).unwrap();
        let enc = dir.path().join("data.enc");
        run_openssl(&[
            "enc",
            "-aes-256-cbc",
            "-pbkdf2",
            "-iter",
            "10000",
            "-pass",
            "pass:the-right-one",
            "-in",
            p(&plain),
            "-out",
            p(&enc),
        ]);
        let out = dir.path().join("out");
        let run = with_ring(
            &ring,
            &["decrypt", p(&enc), "-o", p(&out), "--key", "legacy"],
        );
        match run.code {
            1 => {
                assert!(run.stderr.contains("[auth_failed]"), "{run:#?}");
                assert!(!out.exists(), "output left behind after a failed decrypt");
                assert_eq!(
                    listing(dir.path()),
                    names(&["data.enc", "keys.toml", "plain"])
                );
                clean += 1;
            }
            0 => {
                assert!(
                    fs::read(&out).unwrap() != data,
                    "a wrong passphrase gave the plaintext"
                );
                fs::remove_file(&out).unwrap();
            }
            _ => panic!("unexpected exit: {run:#?}"),
        }
    }
    assert!(clean >= 1, "no wrong-passphrase attempt failed cleanly");
}
