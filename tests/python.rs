//! The Python client's own suite (`clients/python/tests`, pytest) run from `cargo test`, so
//! the README's test command covers it: pytest drives the `ringcryptd` and `ringcrypt`
//! binaries this build made (passed in `RINGCRYPTD` and `RINGCRYPT_CLI`) on real sockets,
//! under both IO backends. This test fails with pytest's whole output when any Python test
//! fails, when pytest cannot run, or when it ran no test at all.
//!
//! The interpreter is always the system one, `/usr/bin/python3` (Debian's, where `.ci/run`
//! installs `python3-pytest`), never whichever `python3` comes first on PATH.

use std::io::Read;
use std::process::{Command, Stdio};
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
