//! The Python client's own suite (`clients/python/tests`, pytest) run from `cargo test`, so
//! the README's test command covers it: pytest drives the `ringcryptd` and `ringcrypt`
//! binaries this build made (passed in `RINGCRYPTD` and `RINGCRYPT_CLI`) on real sockets,
//! under both IO backends. This test fails with pytest's whole output when any Python test
//! fails, when pytest cannot run, or when it ran no test at all.
//!
//! The interpreter is always the system one, `/usr/bin/python3` (Debian's, where `.ci/run`
//! installs `python3-pytest`), never whichever `python3` comes first on PATH.
//!
//! The package claims Python 3.9 or newer, and only a newer interpreter is at hand, so a
//! second test checks the claim statically: `vermin` finds syntax, standard-library members
//! and arguments newer than 3.9 (a `match`, `zip(strict=)`), and `mypy --strict
//! --python-version 3.9` checks the package against 3.9's standard library (an `int | None`
//! evaluated at run time). Both come from PyPI, installed by `.ci/run` into the virtual
//! environment `TARGET/ci-python` (TARGET: cargo's target directory). The same test proves
//! the check can fail: a copy of the package with a 3.10 construct added must be refused.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PYTHON: &str = "/usr/bin/python3";
/// The suite takes about a minute on a quiet 2-core machine; this bound only ends a hang.
const SUITE_TIMEOUT: Duration = Duration::from_secs(900);

#[test]
fn python_client_suite_passes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
    let mut child = Command::new(PYTHON)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(dir)
        .env("RINGCRYPTD", env!("CARGO_BIN_EXE_ringcryptd"))
        .env("RINGCRYPT_CLI", env!("CARGO_BIN_EXE_ringcrypt"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("RINGCRYPT_SOCKET")
        .env_remove("RINGCRYPT_KEYS")
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON} (apt-get install python3): {e}"));
    // Both pipes are drained on threads so a chatty failure cannot fill one and stall pytest.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for pytest") {
            break status;
        }
        if start.elapsed() > SUITE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pytest ran past {SUITE_TIMEOUT:?} and was killed:\n{}",
                out.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "the Python client's tests failed ({status}; exit 5 means none ran, and \"No module \
         named pytest\" means `apt-get install python3-pytest`):\n{stdout}\n{stderr}"
    );
    let summary = stdout.lines().last().unwrap_or("");
    assert!(
        summary.contains(" passed") && !summary.contains("failed"),
        "pytest's summary does not say the tests passed: {summary:?}\n{stdout}\n{stderr}"
    );
    eprintln!("python client: {summary}");
}

const CLIENT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
/// The oldest Python the package supports (pyproject.toml's `requires-python`).
const OLDEST: &str = "3.9";

/// The checkers' virtual environment, `TARGET/ci-python`, where `.ci/run` installs them.
fn ci_venv() -> PathBuf {
    let target = Path::new(env!("CARGO_BIN_EXE_ringcryptd"))
        .parent()
        .and_then(Path::parent)
        .expect("the binary lies in TARGET/PROFILE/");
    let venv = target.join("ci-python");
    for tool in ["vermin", "mypy"] {
        assert!(
            venv.join("bin").join(tool).exists(),
            "{} has no {tool}: .ci/run installs vermin and mypy from PyPI there; here run \
             `/usr/bin/python3 -m venv {0} && {0}/bin/pip install vermin==1.9.2 mypy==1.18.2`",
            venv.display()
        );
    }
    venv
}

fn run(venv: &Path, tool: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(venv.join("bin").join(tool))
        .args(args)
        .current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("MYPY_CACHE_DIR", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} from {}: {e}", venv.display()))
}

/// vermin over the package and its tests: (passed, its report).
fn vermin(venv: &Path, dir: &Path) -> (bool, String) {
    let target = format!("--target={OLDEST}-");
    let out = run(
        venv,
        "vermin",
        &[
            &target,
            "--no-tips",
            "--violations",
            "--eval-annotations",
            ".",
        ],
        dir,
    );
    (out.status.success(), text(&out))
}

/// mypy --strict over the package as Python 3.9 would import it: (passed, its report).
fn mypy(venv: &Path, dir: &Path) -> (bool, String) {
    let out = run(
        venv,
        "mypy",
        &[
            "--python-version",
            OLDEST,
            "--strict",
            "--no-incremental",
            "ringcrypt",
        ],
        dir,
    );
    (out.status.success(), text(&out))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies the package (its `.py` files and `py.typed`) to `to`.
fn copy_package(to: &Path) {
    let from = Path::new(CLIENT_DIR).join("ringcrypt");
    let dest = to.join("ringcrypt");
    std::fs::create_dir_all(&dest).unwrap();
    let mut copied = 0;
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dest.join(path.file_name().unwrap())).unwrap();
            copied += 1;
        }
    }
    assert!(copied > 1, "no package to copy in {}", from.display());
}

#[test]
fn python_client_keeps_to_python_3_9() {
    let venv = ci_venv();
    let dir = Path::new(CLIENT_DIR);
    let (ok, report) = vermin(&venv, dir);
    assert!(
        ok,
        "vermin finds code in clients/python that Python {OLDEST} cannot run:\n{report}"
    );
    let (ok, report) = mypy(&venv, dir);
    assert!(
        ok,
        "mypy --strict --python-version {OLDEST} refuses the package:\n{report}"
    );

    // The checks are live: each 3.10 construct below, added to a copy of the package, must
    // fail the check meant for it, naming the file. The package itself stays untouched.
    let probes = [
        (
            "vermin",
            "def probe(x: object) -> int:\n    match x:\n        case int():\n            return 1\n    return 0\n",
        ),
        (
            "vermin",
            "def probe(a: list[int], b: list[int]) -> list[tuple[int, int]]:\n    return list(zip(a, b, strict=True))\n",
        ),
        (
            "mypy",
            "from typing import Optional\nProbe = int | None\n\ndef probe(x: Optional[int]) -> int:\n    return x or 0\n",
        ),
        (
            "mypy",
            "def probe(x: int | None) -> int:\n    return x or 0\n",
        ),
    ];
    for (tool, code) in probes {
        let scratch = tempfile::tempdir().unwrap();
        copy_package(scratch.path());
        std::fs::write(scratch.path().join("ringcrypt/_probe310.py"), code).unwrap();
        let (ok, report) = match tool {
            "vermin" => vermin(&venv, scratch.path()),
            _ => mypy(&venv, scratch.path()),
        };
        assert!(
            !ok && report.contains("_probe310.py"),
            "{tool} let a Python 3.10 construct through:\n{code}\n{report}"
        );
    }
}
