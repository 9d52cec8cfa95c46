//! The Debian package (`[package.metadata.deb]` in Cargo.toml, `contrib/build-deb.sh`), built
//! with the real `cargo deb`, listed with `dpkg-deb -c`, unpacked with `dpkg-deb -x` into a
//! temporary root, and checked there by `systemd-analyze verify --root`:
//!
//! - it holds both binaries (mode 0755), the units, the sysusers and tmpfiles snippets, the
//!   example configuration, a manual page for each binary and each `ringcrypt` subcommand,
//!   bash, zsh and fish completions for both binaries, the docs, the alert rules and the
//!   dashboard, the copyright file, and the postinst that applies sysusers and tmpfiles;
//! - the unpacked binaries run, each manual page documents every option its binary's
//!   `--help` lists, and no page or completion script mentions the packaging option;
//! - `systemd-analyze verify --root` accepts the unpacked units without a word (the root
//!   gets the host's systemd units and `/bin/kill`, as on an installed system), and
//!   complains once the packaged daemon is missing, so the check reads the package.
//!
//! A release build takes minutes on this project's two cores, so the test packs the binaries
//! this test run built (`cargo deb --no-build` on a target directory holding them, which
//! cargo-deb strips as it would release binaries); `contrib/build-deb.sh` is the same steps
//! after `cargo build --release`. `cargo-deb`, `dpkg-deb` and `systemd-analyze` must be
//! installed: `.ci/run` installs them.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// How long `cargo deb` may take (it strips and compresses about 80 MB of debug binaries).
const PACK_TIMEOUT: Duration = Duration::from_secs(300);
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn show(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn succeeded(what: &str, out: Output) -> String {
    assert!(out.status.success(), "{what} failed:\n{}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tool(name: &str) -> PathBuf {
    on_path(name)
        .unwrap_or_else(|| panic!("{name} is not installed: .ci/run installs it (dpkg, systemd)"))
}

/// Builds the package from the binaries this run built; returns (scratch dir, .deb path).
fn build_package() -> (tempfile::TempDir, PathBuf) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let version = output_within(
        Command::new(&cargo).args(["deb", "--version"]),
        TOOL_TIMEOUT,
    );
    assert!(
        version.status.success(),
        "cargo-deb is not installed: .ci/run installs it (cargo install cargo-deb --locked):\n{}",
        show(&version)
    );
    let dir = tempfile::tempdir().unwrap();
    // A target directory whose release/ holds this run's binaries, as `cargo build
    // --release` would leave them, and the assets each writes for itself.
    let release = dir.path().join("target/release");
    fs::create_dir_all(&release).unwrap();
    for (bin, name) in [(DAEMON, "ringcryptd"), (CLI, "ringcrypt")] {
        fs::copy(bin, release.join(name)).unwrap();
    }
    let assets = release.join("assets");
    succeeded(
        "ringcryptd --generate-assets",
        output_within(
            Command::new(release.join("ringcryptd"))
                .arg("--generate-assets")
                .arg(&assets),
            TOOL_TIMEOUT,
        ),
    );
    succeeded(
        "ringcrypt --generate-assets",
        output_within(
            Command::new(release.join("ringcrypt"))
                .arg("--generate-assets")
                .arg(&assets),
            TOOL_TIMEOUT,
        ),
    );
    let deb = dir.path().join("ringcrypt.deb");
    succeeded(
        "cargo deb --no-build",
        output_within(
            Command::new(&cargo)
                .args(["deb", "--no-build", "--locked", "--fast", "--output"])
                .arg(&deb)
                .current_dir(REPO)
                .env("CARGO_TARGET_DIR", dir.path().join("target")),
            PACK_TIMEOUT,
        ),
    );
    (dir, deb)
}

/// What the package must hold: path (without the leading `./`) and mode.
fn expected_files() -> Vec<(String, u32)> {
    let mut want: Vec<(String, u32)> = vec![
        ("usr/bin/ringcryptd".into(), 0o755),
        ("usr/bin/ringcrypt".into(), 0o755),
    ];
    for file in [
        "usr/lib/systemd/system/ringcryptd.service",
        "usr/lib/systemd/system/ringcryptd.socket",
        "usr/lib/sysusers.d/ringcrypt.conf",
        "usr/lib/tmpfiles.d/ringcrypt.conf",
        "usr/share/doc/ringcrypt/examples/ringcryptd.toml",
        "usr/share/doc/ringcrypt/copyright",
        "usr/share/doc/ringcrypt/README.md",
        "usr/share/doc/ringcrypt/docs/protocol.md",
        "usr/share/doc/ringcrypt/docs/protocol.schema.json",
        "usr/share/doc/ringcrypt/docs/format.md",
        "usr/share/doc/ringcrypt/contrib/prometheus/alerts.yml",
        "usr/share/doc/ringcrypt/contrib/prometheus/alerts_test.yml",
        "usr/share/doc/ringcrypt/contrib/grafana/ringcrypt.json",
        "usr/share/man/man1/ringcryptd.1",
        "usr/share/man/man1/ringcrypt.1",
    ] {
        want.push((file.into(), 0o644));
    }
    for sub in [
        "encrypt",
        "decrypt",
        "rewrap",
        "ping",
        "status",
        "cancel",
        "jobs",
        "stats",
        "keys",
        "reload",
        "keygen",
        "completions",
    ] {
        want.push((format!("usr/share/man/man1/ringcrypt-{sub}.1"), 0o644));
    }
    for bin in ["ringcrypt", "ringcryptd"] {
        want.push((
            format!("usr/share/bash-completion/completions/{bin}"),
            0o644,
        ));
        want.push((format!("usr/share/zsh/vendor-completions/_{bin}"), 0o644));
        want.push((
            format!("usr/share/fish/vendor_completions.d/{bin}.fish"),
            0o644,
        ));
    }
    want
}

/// The long options `--help` of `command` lists.
fn help_options(command: &Path, args: &[&str]) -> Vec<String> {
    let text = succeeded(
        "--help",
        output_within(Command::new(command).args(args).arg("--help"), TOOL_TIMEOUT),
    );
    let mut options: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("-")
                .and_then(|r| r.split_once(", ").map(|x| x.1))
                .unwrap_or(l);
            l.strip_prefix("--")
                .map(|r| r.split([' ', '=', '<']).next().unwrap_or("").to_string())
        })
        .filter(|o| !o.is_empty())
        .collect();
    options.sort();
    options.dedup();
    options
}

#[test]
fn debian_package_installs_what_it_promises_and_its_units_verify() {
    let dpkg_deb = tool("dpkg-deb");
    let analyze = tool("systemd-analyze");
    let (dir, deb) = build_package();

    // The control data: name, version, a dependency on libc, and the postinst.
    let info = succeeded(
        "dpkg-deb -I",
        output_within(Command::new(&dpkg_deb).arg("-I").arg(&deb), TOOL_TIMEOUT),
    );
    for field in [
        "Package: ringcrypt".to_string(),
        format!("Version: {}-1", env!("CARGO_PKG_VERSION")),
        "Depends: libc6".into(),
        "postinst".into(),
        "postrm".into(),
    ] {
        assert!(
            info.contains(&field),
            "no {field:?} in dpkg-deb -I:\n{info}"
        );
    }

    // The listing: every promised file, with its mode.
    let listing = succeeded(
        "dpkg-deb -c",
        output_within(Command::new(&dpkg_deb).arg("-c").arg(&deb), TOOL_TIMEOUT),
    );
    let listed: Vec<(String, String)> = listing
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((
                cols.first()?.to_string(),
                cols.last()?.trim_start_matches("./").to_string(),
            ))
        })
        .collect();
    for (path, mode) in expected_files() {
        let perms = match mode {
            0o755 => "-rwxr-xr-x",
            _ => "-rw-r--r--",
        };
        assert!(
            listed.iter().any(|(p, f)| *f == path && p == perms),
            "the package lacks {path} ({perms}):\n{listing}"
        );
    }

    // Unpacked over a root that has what an installed system gives units: systemd's own
    // units and /bin/kill (merged /usr, as Debian).
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    for entry in fs::read_dir("/usr/lib/systemd/system").unwrap().flatten() {
        let name = entry.file_name();
        if entry.file_type().unwrap().is_file() && !name.to_string_lossy().starts_with("ringcrypt")
        {
            fs::copy(
                entry.path(),
                root.join("usr/lib/systemd/system").join(&name),
            )
            .unwrap();
        }
    }
    fs::copy(tool("kill"), root.join("usr/bin/kill")).unwrap();
    succeeded(
        "dpkg-deb -x",
        output_within(
            Command::new(&dpkg_deb).arg("-x").arg(&deb).arg(&root),
            TOOL_TIMEOUT,
        ),
    );

    // The unpacked binaries run, and each manual page has every option --help lists.
    for (bin, args, page) in [
        ("ringcryptd", &[][..], "ringcryptd.1"),
        ("ringcrypt", &[][..], "ringcrypt.1"),
        ("ringcrypt", &["encrypt"][..], "ringcrypt-encrypt.1"),
    ] {
        let binary = root.join("usr/bin").join(bin);
        let version = succeeded(
            "--version",
            output_within(Command::new(&binary).arg("--version"), TOOL_TIMEOUT),
        );
        assert!(
            version.contains(env!("CARGO_PKG_VERSION")),
            "{bin}: {version}"
        );
        let man = fs::read_to_string(root.join("usr/share/man/man1").join(page)).unwrap();
        assert!(
            man.starts_with(".ie") || man.contains(".TH"),
            "{page} is not roff"
        );
        let options = help_options(&binary, args);
        assert!(
            options.len() >= 3,
            "{bin} {args:?} --help lists {options:?}"
        );
        for option in options {
            // roff escapes each '-' of an option as '\-'.
            let spelled = format!("\\-\\-{}", option.replace('-', "\\-"));
            assert!(
                man.contains(&spelled),
                "{page} does not document --{option}:\n{man}"
            );
        }
    }

    // The packaging option stays out of what users read.
    for (path, _) in expected_files() {
        if path.contains("/man/") || path.contains("completion") {
            let text = fs::read_to_string(root.join(&path)).unwrap();
            assert!(
                !text.contains("generate-assets"),
                "{path} mentions the packaging option --generate-assets"
            );
        }
    }

    // systemd's own check of the installed units, as the package lays them out.
    let verify = || {
        output_within(
            Command::new(&analyze)
                .args(["verify", "--man=no"])
                .arg(format!("--root={}", root.display()))
                .args(["ringcryptd.service", "ringcryptd.socket"])
                .env("SYSTEMD_COLORS", "0")
                .env("SYSTEMD_LOG_COLOR", "0"),
            TOOL_TIMEOUT,
        )
    };
    let clean = verify();
    assert!(
        clean.status.success() && clean.stdout.is_empty() && clean.stderr.is_empty(),
        "systemd-analyze verify --root complained about the package:\n{}",
        show(&clean)
    );
    fs::remove_file(root.join("usr/bin/ringcryptd")).unwrap();
    let broken = verify();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&broken.stdout),
        String::from_utf8_lossy(&broken.stderr)
    );
    assert!(
        said.contains("/usr/bin/ringcryptd"),
        "verify --root did not notice the missing daemon, so it is not reading the package:\n{}",
        show(&broken)
    );
}

#[test]
fn cargo_metadata_names_the_license_and_its_files_exist() {
    let manifest = fs::read_to_string(Path::new(REPO).join("Cargo.toml")).unwrap();
    let table: toml::Table = manifest.parse().unwrap();
    let package = &table["package"];
    assert_eq!(package["license"].as_str(), Some("MIT OR Apache-2.0"));
    for field in ["description", "repository", "rust-version"] {
        assert!(
            package
                .get(field)
                .and_then(|v| v.as_str())
                .is_some_and(|v| !v.is_empty()),
            "Cargo.toml has no {field}"
        );
    }
    for (file, says) in [
        (
            "LICENSE-MIT",
            "Permission is hereby granted, free of charge",
        ),
        (
            "LICENSE-APACHE",
            "Apache License\n                           Version 2.0",
        ),
    ] {
        let text = fs::read_to_string(Path::new(REPO).join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(text.contains(says), "{file} is not the license it names");
    }
}

/// `ringcryptd --completions SHELL` prints a script that completes the daemon's options, for
/// each shell the package ships; with any other option it is a usage error (exit 2) that
/// starts nothing.
#[test]
fn ringcryptd_prints_completions() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef ringcryptd"),
        ("fish", "complete -c ringcryptd"),
    ] {
        let out = output_within(
            Command::new(DAEMON).args(["--completions", shell]),
            TOOL_TIMEOUT,
        );
        let script = succeeded(&format!("ringcryptd --completions {shell}"), out);
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        for option in ["socket", "keys", "allow-root", "metrics", "config"] {
            assert!(
                script.contains(&format!("--{option}")) || script.contains(&format!("-l {option}")),
                "the {shell} script does not complete --{option}"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = output_within(
        Command::new(DAEMON)
            .args(["--completions", "bash", "--dev"])
            .current_dir(dir.path()),
        TOOL_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a usage error made files"
    );
}
