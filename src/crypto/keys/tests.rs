//! The key ring's unit tests.

use super::*;

const A: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn ring(text: &str) -> Result<KeyRing, Error> {
    KeyRing::parse(text, "test.toml")
}

#[test]
fn parses_states_default_and_passphrases() {
    let text = format!(
        "default = \"b\"\n[[key]]\nname = \"a\"\nsecret = \"{A}\"\nstate = \"decrypt-only\"\n\
         [[key]]\nname = \"b\"\nsecret = \"{B}\"\n\
         [[key]]\nname = \"legacy\"\npassphrase = \"pw\"\n"
    );
    let ring = ring(&text).unwrap();
    assert_eq!(ring.default_entry().unwrap().name, "b");
    assert_eq!(ring.by_name("a").unwrap().state, KeyState::DecryptOnly);
    let (_, pass, iter) = ring.passphrase_entry(None).unwrap();
    assert_eq!((pass, iter), ("pw", OPENSSL_DEFAULT_ITER));
    assert_eq!(
        ring.sealing_entry(Some("a")).unwrap_err().code,
        Code::KeyRetired
    );
    let a_id = *match &ring.by_name("a").unwrap().material {
        KeyMaterial::Secret(key) => key.id(),
        KeyMaterial::Passphrase { .. } => unreachable!(),
    };
    assert!(ring.opening_key(&a_id).is_ok());
    assert!(!ring.is_default_key(&a_id), "a is not the default");
    let b_id = *ring
        .opening_key(&a_id)
        .map(|_| ())
        .and_then(|()| match &ring.by_name("b").unwrap().material {
            KeyMaterial::Secret(key) => Ok(key.id()),
            KeyMaterial::Passphrase { .. } => unreachable!(),
        })
        .unwrap();
    assert!(ring.is_default_key(&b_id), "b is the default");
    assert_eq!(
        ring.opening_key(&[0; 16]).unwrap_err().code,
        Code::UnknownKey
    );
}

#[test]
fn a_lone_active_key_is_the_default() {
    let ring = ring(&format!("[[key]]\nname = \"only\"\nsecret = \"{A}\"\n")).unwrap();
    assert_eq!(ring.sealing_entry(None).unwrap().name, "only");
}

#[test]
fn malformed_rings_are_refused_without_echoing_secrets() {
    let cases = [
        (
            "[[key]]\nname = \"a\"\nsecret = \"abc\"\n".to_string(),
            "64 hex digits",
        ),
        (
            format!(
                "[[key]]\nname = \"a\"\nsecret = \"{A}\"\n[[key]]\nname = \"a\"\nsecret = \"{B}\"\n"
            ),
            "appears twice",
        ),
        (
            format!(
                "[[key]]\nname = \"a\"\nsecret = \"{A}\"\n[[key]]\nname = \"b\"\nsecret = \"{A}\"\n"
            ),
            "same secret",
        ),
        (
            format!("default = \"zz\"\n[[key]]\nname = \"a\"\nsecret = \"{A}\"\n"),
            "not in the ring",
        ),
        (
            format!("[[key]]\nname = \"a\"\nsecret = \"{A}\"\nstate = \"sleepy\"\n"),
            "state",
        ),
        (
            format!("[[key]]\nname = \"a\"\nsecret = \"{A}\"\npassphrase = \"x\"\n"),
            "both",
        ),
        ("[[key]]\nname = \"a\"\n".to_string(), "neither"),
        (
            format!("[[key]]\nname = \"a\"\nsecret = \"{A}\"\nsecrt = 1\n"),
            "not a valid key ring",
        ),
        (format!("[[key]]\nname = \"a\"\nsecret = \"{A}\""), ""),
        (
            format!("[[key]\nname = \"a\"\nsecret = \"{A}\"\n"),
            "line 1",
        ),
    ];
    for (text, needle) in &cases[..8] {
        let err = ring(text).unwrap_err();
        assert!(err.message.contains(needle), "{text:?} gave {err}");
        assert!(!err.message.contains(A), "secret echoed: {err}");
    }
    assert!(ring(&cases[8].0).is_ok());
    let err = ring(&cases[9].0).unwrap_err();
    assert!(
        err.message.contains("line 1") && !err.message.contains(A),
        "{err}"
    );
}

#[test]
fn parser_messages_never_echo_values() {
    for text in [
        "[[key]]\nname = \"a\"\npassphrase = 73915562048\n",
        "[[key]]\nname = \"a\"\npassphrase = \"x\"\niter = \"73915562048\"\n",
        "[[key]]\nname = \"a\"\n73915562048 = 1\n",
    ] {
        let err = ring(text).unwrap_err();
        assert!(!err.message.contains("73915562048"), "{err}");
        assert!(err.message.contains("line"), "{err}");
    }
    assert_eq!(
        redact("unknown field `x`, expected `name`"),
        "unknown field …, expected `name`"
    );
}

#[test]
fn names_states_and_defaults_never_echo_a_pasted_secret() {
    for text in [
        format!("[[key]]\nname = \"{A}\"\nsecret = \"{A}\"\nstate = \"x\"\n"),
        format!("[[key]]\nname = \"a\"\nsecret = \"{B}\"\nstate = \"{A}\"\n"),
        format!("default = \"{A}\"\n[[key]]\nname = \"a\"\nsecret = \"{B}\"\n"),
    ] {
        let err = ring(&text).unwrap_err();
        assert!(!err.message.contains(&A[..32]), "{err}");
    }
    assert_eq!(
        redact_hex("id 3495ebfe1279056bcf6bed69d84c7236 ok"),
        "id [hex redacted] ok"
    );
    assert_eq!(redact_hex("short 0123abcd"), "short 0123abcd");
}

#[test]
fn debug_output_never_shows_key_bytes() {
    let ring = ring(&format!(
        "[[key]]\nname = \"a\"\nsecret = \"{A}\"\n[[key]]\nname = \"p\"\npassphrase = \"sesame\"\n"
    ))
    .unwrap();
    let shown = format!("{ring:?}");
    assert!(
        !shown.contains(A) && !shown.contains("1111") && !shown.contains("sesame"),
        "{shown}"
    );
    assert!(shown.contains("\"a\""), "{shown}");
}

#[test]
fn secrets_are_locked_in_memory_when_the_limit_allows() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock);
    let ring = ring(&format!("[[key]]\nname = \"a\"\nsecret = \"{A}\"\n")).unwrap();
    // Two pages at most; any usable limit (the default is 8 MiB) allows them.
    if limit.current.is_none_or(|bytes| bytes >= 64 * 1024) {
        assert!(ring.memory_locked());
        // The kernel's own count: only mlock raises VmLck (io_uring pins are VmPin).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let locked_kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmLck:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        assert!(locked_kib >= 4, "no page is locked: VmLck {locked_kib} kB");
    }
}

#[test]
fn keygen_entries_parse_back() {
    let entry = keygen_entry("fresh \"one\"").unwrap();
    let ring = ring(&entry).unwrap();
    assert_eq!(ring.sealing_entry(None).unwrap().name, "fresh \"one\"");
}
