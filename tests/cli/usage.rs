//! Usage errors: exit 2.

use super::*;

// ---------------------------------------------------------------------------------------------
// 10. Usage errors
// ---------------------------------------------------------------------------------------------

/// Intact: a wrong command line is exit 2 (never 0 or 1) and writes nothing; a missing key
/// ring is exit 2 with a hint saying how to make one.
#[test]
fn bad_usage_exits_2() {
    let (dir, ring, _) = one_key_setup();
    let plain = dir.path().join("plain");
    write_input(&plain, b"data");
    let before = listing(dir.path());

    ringcrypt(&["frobnicate"]).usage();
    ringcrypt(&[]).usage();
    with_ring(&ring, &["encrypt"]).usage();
    with_ring(&ring, &["decrypt"]).usage();
    with_ring(&ring, &["rewrap"]).usage();
    for bad in ["30", "11", "25", "x", "-1"] {
        with_ring(&ring, &["encrypt", p(&plain), "--chunk-log2", bad]).usage();
    }
    with_ring(&ring, &["encrypt", p(&plain), "--format", "zip"]).usage();
    with_ring(&ring, &["encrypt", p(&plain), "--bogus"]).usage();
    // rewrap needs exactly one of -o and --in-place.
    with_ring(&ring, &["rewrap", p(&plain)]).usage();
    with_ring(
        &ring,
        &[
            "rewrap",
            p(&plain),
            "--in-place",
            "-o",
            p(&dir.path().join("o")),
        ],
    )
    .usage();
    assert_eq!(listing(dir.path()), before);

    // Without --keys the client asks the daemon; with none listening that is exit 3, and
    // the message names the socket and says how to start one or go offline.
    let socket = dir.path().join("no-daemon.sock");
    for args in [
        vec!["--socket", p(&socket), "encrypt", p(&plain)],
        vec!["--socket", p(&socket), "decrypt", "x.rcrypt"],
        vec!["--socket", p(&socket), "rewrap", "x.rcrypt", "--in-place"],
    ] {
        let run = ringcrypt(&args);
        assert_eq!(run.code, 3, "no daemon: {run:#?}");
        assert!(
            run.stderr.contains(p(&socket)) && run.stderr.contains("hint: "),
            "an unreachable daemon needs the socket named and a hint: {run:#?}"
        );
    }
    assert_eq!(listing(dir.path()), before);

    // RINGCRYPT_KEYS stands in for --keys.
    let by_env = Command::new(CLI)
        .args(["encrypt", p(&plain)])
        .env("RINGCRYPT_KEYS", &ring)
        .output()
        .unwrap();
    assert!(by_env.status.success(), "{by_env:?}");
    assert!(dir.path().join("plain.rcrypt").is_file());

    // --help and --version are not errors.
    assert!(ringcrypt(&["--help"]).ok().stdout.contains("Exit codes"));
    ringcrypt(&["--version"]).ok();
}
