//! The daemon end to end: throughput and latency of `ringcryptd` through its socket, with
//! `openssl enc` as the baseline in the same run (docs/architecture.md, docs/protocol.md; README "Performance").
//!
//! A plain bench binary (`harness = false`): `cargo bench --bench daemon` prints a table and
//! asserts nothing about speed. It makes a scratch directory (under /dev/shm when it exists,
//! so tmpfs keeps the disk out of the figures; `--dir PATH` puts it under PATH instead), a
//! 0600 key ring with `ringcrypt keygen`, and starts a fresh `ringcryptd` for every row of the
//! table, so each row's peak RSS (VmHWM) is that row's alone. Requests are raw JSON lines on a
//! `UnixStream`, all with `wait: true`, timed from the send to the `done` line.
//!
//! The measurements, after reading every input once to warm the page cache:
//!
//! 1. one 1 GiB file: encrypt (`--fsync never` and `always`) and decrypt (`never`), against
//!    `openssl enc -aes-256-cbc -pbkdf2 -iter 10000`;
//! 2. 1000 files of 1 MiB from 16 concurrent clients, each on its own connection pipelining
//!    its share, against `find | xargs -0 -P2 openssl enc`;
//! 3. 10,000 sequential 4 KiB encrypt jobs on one connection: p50, p99, max;
//! 4. trees: 20,000 files of 4 KiB in 100 directories, encrypted by the real client
//!    (`ringcrypt encrypt -r`) through a fresh daemon (`--fsync never` and `always`) and
//!    offline (`--keys`), and by a raw socket tree request, against `find | xargs -0 -P2
//!    openssl enc` and a Python `ProcessPoolExecutor` (2 workers) over the `cryptography`
//!    package (skipped, with a note, when python3 cannot import it). The issue's targets for
//!    the client through the daemon, ≥ 25,000 files/s, ≥ 60× xargs and ≥ 10× the Python
//!    pool, are marked "met" or "not met".
//!
//! `--quick` (or `RINGCRYPT_BENCH_QUICK=1`) shrinks every size for a smoke run; other
//! arguments, such as the `--bench` that `cargo bench` passes, are ignored. Each measurement's
//! outputs are deleted before the next, so at most one input set and one output set exist at
//! a time (about 2 GiB in a full run).

#![forbid(unsafe_code)]

mod support;

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    CLIENT_EXE, Daemon, Fsync, MIB, OPENSSL_ENC, Scratch, Table, count_files, make_key_ring,
    openssl_command, remove, warm, write_input,
};

/// How long any one reply may take; a 1 GiB job with fsync on a slow disk stays well inside.
const REPLY_TIMEOUT: Duration = Duration::from_secs(600);
/// Concurrent clients in measurement 2, each with its own connection.
const CLIENTS: usize = 16;
/// Parallel openssl processes in the `xargs` baseline.
const XARGS_PARALLEL: usize = 2;

/// What one run measures.
struct Sizes {
    big_bytes: u64,
    many_files: usize,
    many_file_bytes: u64,
    latency_jobs: usize,
    latency_file_bytes: u64,
    tree_files: usize,
    tree_dirs: usize,
    tree_file_bytes: u64,
}

const FULL: Sizes = Sizes {
    big_bytes: 1024 * MIB,
    many_files: 1000,
    many_file_bytes: MIB,
    latency_jobs: 10_000,
    latency_file_bytes: 4096,
    tree_files: 20_000,
    tree_dirs: 100,
    tree_file_bytes: 4096,
};

const QUICK: Sizes = Sizes {
    big_bytes: 64 * MIB,
    many_files: 100,
    many_file_bytes: MIB,
    latency_jobs: 1000,
    latency_file_bytes: 4096,
    tree_files: 2000,
    tree_dirs: 100,
    tree_file_bytes: 4096,
};

struct Args {
    quick: bool,
    dir: Option<PathBuf>,
}

impl Args {
    fn parse() -> Args {
        let mut quick = std::env::var("RINGCRYPT_BENCH_QUICK").is_ok_and(|v| v == "1");
        let mut dir = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--quick" {
                quick = true;
            } else if arg == "--dir" {
                dir = args.next().map(PathBuf::from);
            } else if let Some(path) = arg.strip_prefix("--dir=") {
                dir = Some(PathBuf::from(path));
            }
        }
        Args { quick, dir }
    }
}

impl Daemon {
    fn connect(&self) -> Conn {
        Conn::connect(&self.socket).expect("connect to ringcryptd")
    }
}

/// One client connection: JSON lines each way.
struct Conn {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Conn {
    fn connect(socket: &Path) -> io::Result<Conn> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Conn { stream, reader })
    }

    fn send(&mut self, request: &Value) {
        self.send_raw(&line(request));
    }

    fn send_raw(&mut self, lines: &[u8]) {
        self.stream.write_all(lines).expect("send a request");
    }

    fn recv(&mut self) -> Value {
        let mut text = String::new();
        let n = self.reader.read_line(&mut text).expect("read a reply");
        assert!(n > 0, "ringcryptd closed the connection");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("reply {text:?} is not JSON: {e}"))
    }

    /// Reads replies until a job ends and returns its `done`; a job that fails stops the bench.
    fn until_done(&mut self) -> Value {
        loop {
            let reply = self.recv();
            match reply["type"].as_str() {
                Some("done") => return reply,
                Some("error") => panic!("job failed: {reply}"),
                _ => {} // accepted, progress
            }
        }
    }
}

fn line(request: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(request).expect("a JSON value serializes");
    bytes.push(b'\n');
    bytes
}

fn file_job(op: &str, id: usize, input: &Path, output: &Path) -> Value {
    json!({
        "op": op,
        "id": id,
        "input": input.to_str().expect("scratch paths are UTF-8"),
        "output": output.to_str().expect("scratch paths are UTF-8"),
        "wait": true,
    })
}

/// Sends one file job and waits for its `done`; returns the time from send to `done`.
fn one_job(conn: &mut Conn, op: &str, id: usize, input: &Path, output: &Path) -> Duration {
    let start = Instant::now();
    conn.send(&file_job(op, id, input, output));
    let done = conn.until_done();
    let time = start.elapsed();
    assert_eq!(done["files_ok"], 1, "{op} {}: {done}", input.display());
    time
}

/// `--fsync` variants, fresh daemon each, then `run` on it; returns the figure and the
/// daemon's peak RSS.
fn with_daemon<T>(bench: &Bench, fsync: Fsync, run: impl FnOnce(&Daemon) -> T) -> (T, String) {
    let (figure, rss) = support::with_daemon(&bench.dir, &bench.keys, fsync, None, run);
    let rss = rss.map_or("?".to_string(), |mib| format!("{mib:.0} MiB"));
    (figure, rss)
}

/// Everything the measurements share.
struct Bench {
    dir: PathBuf,
    keys: PathBuf,
    sizes: Sizes,
}

/// Runs a command to completion and returns how long it took; a failure stops the bench.
fn time_command(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd.output().expect("spawn a baseline command");
    let time = start.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    time
}

fn mb_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e6
}

fn throughput_row(
    what: String,
    fsync: &str,
    bytes: u64,
    files: usize,
    time: Duration,
    baseline_mb_s: Option<f64>,
    rss: &str,
) -> Vec<String> {
    let rate = mb_per_s(bytes, time);
    vec![
        what,
        fsync.to_string(),
        format!("{:.3}", time.as_secs_f64()),
        format!("{rate:.0}"),
        // A single file's files/s only restates its time.
        match files {
            1 => "-".to_string(),
            _ => format!("{:.0}", files as f64 / time.as_secs_f64()),
        },
        baseline_mb_s.map_or("1.00x".to_string(), |base| format!("{:.2}x", rate / base)),
        rss.to_string(),
    ]
}

/// Measurement 1: one big file through the socket, and `openssl enc` on it.
fn one_big_file(bench: &Bench, table: &mut Table) {
    let bytes = bench.sizes.big_bytes;
    let mib = bytes / MIB;
    let input = bench.dir.join("big.bin");
    let sealed = bench.dir.join("big.bin.rcrypt");
    eprintln!("1. writing a {mib} MiB input");
    write_input(&input, bytes, 1);
    warm([&input]);

    eprintln!("1. openssl enc, {mib} MiB");
    let openssl_out = bench.dir.join("big.bin.enc");
    let openssl_time = time_command(&mut openssl_command(OPENSSL_ENC, &input, &openssl_out));
    remove(&openssl_out);
    let openssl_rate = mb_per_s(bytes, openssl_time);
    table.row(throughput_row(
        format!("1 x {mib} MiB, openssl enc (baseline)"),
        "-",
        bytes,
        1,
        openssl_time,
        None,
        "-",
    ));

    for fsync in [Fsync::Never, Fsync::Always] {
        eprintln!("1. encrypt {mib} MiB, fsync {}", fsync.as_str());
        let (time, rss) = with_daemon(bench, fsync, |daemon| {
            one_job(&mut daemon.connect(), "encrypt", 1, &input, &sealed)
        });
        table.row(throughput_row(
            format!("1 x {mib} MiB, encrypt"),
            fsync.as_str(),
            bytes,
            1,
            time,
            Some(openssl_rate),
            &rss,
        ));
        if let Fsync::Never = fsync {
            remove(&sealed);
        }
    }

    // The last sealed output (fsync always) is decrypt's input; the plaintext goes first so
    // that only one input and one output exist at a time.
    remove(&input);
    warm([&sealed]);
    eprintln!("1. decrypt {mib} MiB, fsync never");
    let opened = bench.dir.join("big.out");
    let (time, rss) = with_daemon(bench, Fsync::Never, |daemon| {
        one_job(&mut daemon.connect(), "decrypt", 2, &sealed, &opened)
    });
    let opened_bytes = fs::metadata(&opened)
        .expect("decrypt wrote its output")
        .len();
    assert_eq!(opened_bytes, bytes, "decrypt gave back a different length");
    remove(&sealed);
    remove(&opened);
    table.row(throughput_row(
        format!("1 x {mib} MiB, decrypt"),
        "never",
        bytes,
        1,
        time,
        Some(openssl_rate),
        &rss,
    ));
}

/// Sends every job of `inputs` from `CLIENTS` threads, each on its own connection with its
/// share pipelined (all lines written at once), and returns the time until the last `done`.
fn concurrent_clients(daemon: &Daemon, inputs: &[PathBuf]) -> Duration {
    let start_line = Arc::new(Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let mut conn = daemon.connect();
            let mut lines = Vec::new();
            let mut jobs = 0;
            for (id, input) in inputs.iter().enumerate().skip(client).step_by(CLIENTS) {
                let output = input.with_extension("bin.rcrypt");
                lines.extend(line(&file_job("encrypt", id, input, &output)));
                jobs += 1;
            }
            let start_line = Arc::clone(&start_line);
            thread::spawn(move || {
                start_line.wait();
                conn.send_raw(&lines);
                for _ in 0..jobs {
                    conn.until_done();
                }
                Instant::now()
            })
        })
        .collect();
    start_line.wait();
    let start = Instant::now();
    let end = clients
        .into_iter()
        .map(|client| client.join().expect("a client thread"))
        .max()
        .expect("at least one client");
    end - start
}

/// Measurement 2: many 1 MiB files from concurrent clients, and `find | xargs openssl`.
fn many_files(bench: &Bench, table: &mut Table) {
    let Sizes {
        many_files: count,
        many_file_bytes: file_bytes,
        ..
    } = bench.sizes;
    let dir = bench.dir.join("many");
    fs::create_dir(&dir).expect("create the many-files directory");
    eprintln!("2. writing {count} x {} MiB inputs", file_bytes / MIB);
    let inputs: Vec<PathBuf> = (0..count)
        .map(|i| {
            let path = dir.join(format!("f{i:05}.bin"));
            write_input(&path, file_bytes, i as u64 + 2);
            path
        })
        .collect();
    warm(&inputs);
    let total = file_bytes * count as u64;
    let label = format!("{count} x {} MiB", file_bytes / MIB);

    eprintln!("2. find | xargs -P{XARGS_PARALLEL} openssl enc, {label}");
    let script = format!(
        "find \"$1\" -name '*.bin' -print0 | xargs -0 -P{XARGS_PARALLEL} -I{{}} \
         {OPENSSL_ENC} -in {{}} -out {{}}.enc"
    );
    let openssl_time = time_command(Command::new("sh").args(["-c", &script, "sh"]).arg(&dir));
    for input in &inputs {
        remove(&input.with_extension("bin.enc"));
    }
    let openssl_rate = mb_per_s(total, openssl_time);
    table.row(throughput_row(
        format!("{label}, openssl via xargs -P{XARGS_PARALLEL} (baseline)"),
        "-",
        total,
        count,
        openssl_time,
        None,
        "-",
    ));

    for fsync in [Fsync::Never, Fsync::Always] {
        eprintln!(
            "2. encrypt {label}, {CLIENTS} clients, fsync {}",
            fsync.as_str()
        );
        let (time, rss) = with_daemon(bench, fsync, |daemon| concurrent_clients(daemon, &inputs));
        for input in &inputs {
            remove(&input.with_extension("bin.rcrypt"));
        }
        table.row(throughput_row(
            format!("{label}, encrypt, {CLIENTS} clients"),
            fsync.as_str(),
            total,
            count,
            time,
            Some(openssl_rate),
            &rss,
        ));
    }
    fs::remove_dir_all(&dir).expect("remove the many-files directory");
}

/// The nearest-rank percentile `p` (0..=1) of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Measurement 3: sequential small jobs on one connection, each sent after the last `done`.
fn latency(bench: &Bench, table: &mut Table) {
    let Sizes {
        latency_jobs: jobs,
        latency_file_bytes: file_bytes,
        ..
    } = bench.sizes;
    let dir = bench.dir.join("small");
    fs::create_dir(&dir).expect("create the small-files directory");
    eprintln!("3. writing {jobs} x {} KiB inputs", file_bytes / 1024);
    let inputs: Vec<PathBuf> = (0..jobs)
        .map(|i| {
            let path = dir.join(format!("s{i:05}.bin"));
            write_input(&path, file_bytes, i as u64 + 1_000_000);
            path
        })
        .collect();
    warm(&inputs);

    eprintln!("3. {jobs} sequential encrypt jobs, fsync never");
    let ((mut samples, total), rss) = with_daemon(bench, Fsync::Never, |daemon| {
        let mut conn = daemon.connect();
        let start = Instant::now();
        let samples: Vec<Duration> = inputs
            .iter()
            .enumerate()
            .map(|(id, input)| {
                let output = input.with_extension("bin.rcrypt");
                one_job(&mut conn, "encrypt", id, input, &output)
            })
            .collect();
        (samples, start.elapsed())
    });
    fs::remove_dir_all(&dir).expect("remove the small-files directory");
    samples.sort();
    let micros = |d: Duration| format!("{}", d.as_micros());
    table.row(vec![
        format!("{jobs} x {} KiB encrypt, one connection", file_bytes / 1024),
        "never".to_string(),
        micros(percentile(&samples, 0.50)),
        micros(percentile(&samples, 0.99)),
        micros(*samples.last().expect("at least one job")),
        format!("{:.0}", jobs as f64 / total.as_secs_f64()),
        rss,
    ]);
}

/// The Python baseline of measurement 4: a `ProcessPoolExecutor` over the `cryptography`
/// package. AES-256-CBC + PKCS7 with a random IV per file (written before the ciphertext) and
/// one PBKDF2-HMAC-SHA256 key for the run; unauthenticated, like `openssl enc`. Prints
/// `FILES BYTES` when done.
const PYTHON_POOL: &str = r#"import os
import sys
from concurrent.futures import ProcessPoolExecutor

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

KEY = None


def init(key):
    global KEY
    KEY = key


def seal(job):
    src, dst = job
    with open(src, "rb") as f:
        data = f.read()
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(KEY), modes.CBC(iv)).encryptor()
    with open(dst, "wb") as f:
        f.write(iv + enc.update(padded) + enc.finalize())
    return len(data)


def main():
    src, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=os.urandom(16), iterations=10000)
    key = kdf.derive(b"x")
    jobs = []
    for root, _dirs, files in os.walk(src):
        target = os.path.join(out, os.path.relpath(root, src))
        os.makedirs(target, exist_ok=True)
        for name in files:
            jobs.append((os.path.join(root, name), os.path.join(target, name + ".enc")))
    with ProcessPoolExecutor(max_workers=workers, initializer=init, initargs=(key,)) as pool:
        total = sum(pool.map(seal, jobs, chunksize=64))
    print(len(jobs), total)


if __name__ == "__main__":
    main()
"#;

/// Worker processes in the Python baseline, like `XARGS_PARALLEL`.
const PYTHON_WORKERS: usize = 2;
/// The targets of measurement 4 (the issue's), for the daemon client's rows.
const TREE_TARGET_FILES_S: f64 = 25_000.0;
const TREE_TARGET_VS_XARGS: f64 = 60.0;
const TREE_TARGET_VS_PYTHON: f64 = 10.0;

/// Runs a command to completion; a failure stops the bench. Returns the time and stdout.
fn time_command_output(cmd: &mut Command) -> (Duration, String) {
    let start = Instant::now();
    let out = cmd.output().expect("spawn a command");
    let time = start.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (time, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Asserts that `out` mirrors the tree with exactly `count` files, all ending in `suffix`.
fn check_tree_output(out: &Path, count: usize, suffix: &str, what: &str) {
    let (all, matching) = count_files(out, suffix);
    assert_eq!(
        (all, matching),
        (count, count),
        "{what}: {} holds {all} files, {matching} of them *{suffix}; expected {count}",
        out.display()
    );
}

/// One row of measurement 4, before the ratios are known.
struct TreeRow {
    what: String,
    fsync: &'static str,
    time: Duration,
    rss: String,
    /// The issue's targets apply to this row (the client through the daemon).
    targeted: bool,
}

/// `"62.1x met"`-style cell: the ratio of `rate` to `base`, and the verdict when asked.
fn ratio_cell(rate: f64, base: Option<f64>, target: Option<f64>) -> String {
    let Some(base) = base else {
        return "-".to_string();
    };
    let ratio = rate / base;
    let digits = if ratio < 1.0 { 3 } else { 1 };
    match target {
        Some(target) if ratio >= target => format!("{ratio:.digits$}x met"),
        Some(_) => format!("{ratio:.digits$}x not met"),
        None => format!("{ratio:.digits$}x"),
    }
}

/// Measurement 4: a directory tree of small files through the real client (via the daemon
/// and offline), a raw socket tree request, `find | xargs openssl` and a Python process pool.
fn trees(bench: &Bench, table: &mut Table) -> Vec<String> {
    let Sizes {
        tree_files: count,
        tree_dirs: dirs,
        tree_file_bytes: file_bytes,
        ..
    } = bench.sizes;
    let mut notes = Vec::new();
    let root = bench.dir.join("tree");
    let src = root.join("src");
    eprintln!(
        "4. writing {count} x {} KiB inputs in {dirs} directories",
        file_bytes / 1024
    );
    let inputs: Vec<PathBuf> = (0..count)
        .map(|i| {
            let dir = src.join(format!("d{:03}", i % dirs));
            if i < dirs {
                fs::create_dir_all(&dir).expect("create a tree directory");
            }
            let path = dir.join(format!("f{i:06}.bin"));
            write_input(&path, file_bytes, i as u64 + 2_000_000);
            path
        })
        .collect();
    warm(&inputs);
    let total = file_bytes * count as u64;
    let rate = |time: Duration| count as f64 / time.as_secs_f64();
    let mut rows = Vec::new();

    // a. The real client through a fresh daemon, and the raw request it makes, for comparison.
    for fsync in [Fsync::Never, Fsync::Always] {
        eprintln!(
            "4. ringcrypt encrypt -r via the daemon, {count} files, fsync {}",
            fsync.as_str()
        );
        let out = root.join("out");
        let (time, rss) = with_daemon(bench, fsync, |daemon| {
            let (time, _) = time_command_output(
                Command::new(CLIENT_EXE)
                    .arg("--socket")
                    .arg(&daemon.socket)
                    .args(["encrypt", "-r"])
                    .arg(&src)
                    .arg("-o")
                    .arg(&out)
                    .arg("--quiet"),
            );
            time
        });
        check_tree_output(
            &out,
            count,
            ".rcrypt",
            "ringcrypt encrypt -r via the daemon",
        );
        fs::remove_dir_all(&out).expect("remove the tree output");
        rows.push(TreeRow {
            what: "ringcrypt encrypt -r, via the daemon".to_string(),
            fsync: fsync.as_str(),
            time,
            rss,
            targeted: true,
        });
    }

    eprintln!("4. raw socket tree request, {count} files, fsync never");
    let out = root.join("out-raw");
    let (time, rss) = with_daemon(bench, Fsync::Never, |daemon| {
        let mut conn = daemon.connect();
        let start = Instant::now();
        conn.send(&json!({
            "op": "encrypt",
            "id": 1,
            "input": src.to_str().expect("scratch paths are UTF-8"),
            "output": out.to_str().expect("scratch paths are UTF-8"),
            "recursive": true,
            "wait": true,
        }));
        let done = conn.until_done();
        let time = start.elapsed();
        assert_eq!(done["files_ok"], count, "raw tree request: {done}");
        time
    });
    check_tree_output(&out, count, ".rcrypt", "raw tree request");
    fs::remove_dir_all(&out).expect("remove the tree output");
    rows.push(TreeRow {
        what: "raw socket request (no client)".to_string(),
        fsync: "never",
        time,
        rss,
        targeted: false,
    });

    // b. The offline client: every core in one process, no daemon.
    eprintln!("4. ringcrypt --keys encrypt -r (offline), {count} files");
    let out2 = root.join("out2");
    let (time, _) = time_command_output(
        Command::new(CLIENT_EXE)
            .arg("--keys")
            .arg(&bench.keys)
            .args(["encrypt", "-r"])
            .arg(&src)
            .arg("-o")
            .arg(&out2)
            .arg("--quiet"),
    );
    check_tree_output(&out2, count, ".rcrypt", "ringcrypt --keys encrypt -r");
    fs::remove_dir_all(&out2).expect("remove the tree output");
    rows.push(TreeRow {
        what: "ringcrypt --keys encrypt -r, offline".to_string(),
        // The offline client always fsyncs each output and its directory before linking.
        fsync: "always",
        time,
        rss: "-".to_string(),
        targeted: false,
    });

    // c. find | xargs openssl: outputs land next to the inputs and go right after.
    eprintln!("4. find | xargs -P{XARGS_PARALLEL} openssl enc, {count} files");
    let script = format!(
        "find \"$1\" -type f -print0 | xargs -0 -P{XARGS_PARALLEL} -I{{}} \
         {OPENSSL_ENC} -in {{}} -out {{}}.enc"
    );
    let (xargs_time, _) =
        time_command_output(Command::new("sh").args(["-c", &script, "sh"]).arg(&src));
    let (all, enc) = count_files(&src, ".enc");
    assert_eq!((all, enc), (2 * count, count), "xargs openssl: outputs");
    for input in &inputs {
        remove(&input.with_extension("bin.enc"));
    }

    // d. Python's process pool over `cryptography`, when python3 can import it.
    let python_ok = Command::new("python3")
        .args(["-c", "import cryptography"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    let python_time = if python_ok {
        eprintln!("4. python3 ProcessPoolExecutor({PYTHON_WORKERS}) + cryptography, {count} files");
        let script = bench.dir.join("tree_pool.py");
        fs::write(&script, PYTHON_POOL).expect("write the Python baseline");
        let out3 = root.join("out3");
        let (time, stdout) = time_command_output(
            Command::new("python3")
                .arg(&script)
                .arg(&src)
                .arg(&out3)
                .arg(PYTHON_WORKERS.to_string()),
        );
        assert_eq!(
            stdout.trim(),
            format!("{count} {total}"),
            "the Python baseline's count"
        );
        check_tree_output(&out3, count, ".enc", "Python pool");
        fs::remove_dir_all(&out3).expect("remove the tree output");
        Some(time)
    } else {
        notes.push(format!(
            "python3 ProcessPoolExecutor({PYTHON_WORKERS}) + cryptography: skipped: python3 \
             cannot import cryptography (pip install cryptography)"
        ));
        None
    };
    fs::remove_dir_all(&root).expect("remove the tree directory");

    let xargs_rate = rate(xargs_time);
    let python_rate = python_time.map(rate);
    let label = format!("{count} x {} KiB", file_bytes / 1024);
    let mut push = |what: String, fsync: &str, time: Duration, rss: &str, targeted: bool| {
        let files_s = rate(time);
        let target = |t: f64| targeted.then_some(t);
        table.row(vec![
            format!("{label}, {what}"),
            fsync.to_string(),
            count.to_string(),
            format!("{:.3}", time.as_secs_f64()),
            match target(TREE_TARGET_FILES_S) {
                Some(t) if files_s >= t => format!("{files_s:.0} met"),
                Some(_) => format!("{files_s:.0} not met"),
                None => format!("{files_s:.0}"),
            },
            format!("{:.1}", mb_per_s(total, time)),
            ratio_cell(files_s, Some(xargs_rate), target(TREE_TARGET_VS_XARGS)),
            ratio_cell(files_s, python_rate, target(TREE_TARGET_VS_PYTHON)),
            rss.to_string(),
        ]);
    };
    for row in &rows {
        push(
            row.what.clone(),
            row.fsync,
            row.time,
            &row.rss,
            row.targeted,
        );
    }
    push(
        format!("find | xargs -P{XARGS_PARALLEL} openssl enc (baseline)"),
        "-",
        xargs_time,
        "-",
        false,
    );
    if let Some(time) = python_time {
        push(
            format!("python3 ProcessPoolExecutor({PYTHON_WORKERS}) + cryptography (baseline)"),
            "-",
            time,
            "-",
            false,
        );
    }
    notes
}

fn main() {
    let args = Args::parse();
    let scratch = Scratch::create(args.dir, "bench");
    let bench = Bench {
        keys: make_key_ring(&scratch.path),
        dir: scratch.path.clone(),
        sizes: if args.quick { QUICK } else { FULL },
    };

    let pong = Daemon::start(&bench.dir, &bench.keys, Fsync::Never, None)
        .pong
        .clone();
    let cores = thread::available_parallelism().map_or(1, |n| n.get());

    let mut throughput = Table::new(
        &[
            "throughput",
            "fsync",
            "seconds",
            "MB/s",
            "files/s",
            "vs openssl",
            "daemon VmHWM",
        ],
        1,
    );
    one_big_file(&bench, &mut throughput);
    many_files(&bench, &mut throughput);
    let mut latencies = Table::new(
        &[
            "latency",
            "fsync",
            "p50 us",
            "p99 us",
            "max us",
            "jobs/s",
            "daemon VmHWM",
        ],
        1,
    );
    latency(&bench, &mut latencies);
    let mut tree_table = Table::new(
        &[
            "trees",
            "fsync",
            "files",
            "seconds",
            "files/s",
            "MB/s",
            "vs xargs",
            "vs python",
            "daemon VmHWM",
        ],
        1,
    );
    let tree_notes = trees(&bench, &mut tree_table);

    println!(
        "\nringcrypt daemon bench{}: ringcryptd {} with {} shards, backend {}, {cores} cores",
        if args.quick { " (quick)" } else { "" },
        pong["version"].as_str().unwrap_or("?"),
        pong["shards"],
        pong["backend"].as_str().unwrap_or("?"),
    );
    println!("scratch: {}", scratch.note);
    println!(
        "MB/s = 10^6 plaintext bytes/s from request sent to the last `done`; a fresh daemon per \
         row, so VmHWM is that row's peak RSS\n"
    );
    throughput.print();
    println!();
    latencies.print();
    println!(
        "\nbaselines: `{OPENSSL_ENC} -in F -out F.enc`, one process per file (single-chain CBC, \
         no MAC); \"vs openssl\" divides by the baseline of the same size in this run"
    );
    println!();
    tree_table.print();
    for note in &tree_notes {
        println!("note: {note}");
    }
    println!(
        "\ntrees: the client rows are whole `ringcrypt` processes (start to exit); \"vs xargs\" and \
         \"vs python\" divide files/s by those baselines' in this run; targets (client via the \
         daemon): >= {TREE_TARGET_FILES_S:.0} files/s, >= {TREE_TARGET_VS_XARGS:.0}x xargs, \
         >= {TREE_TARGET_VS_PYTHON:.0}x the Python pool; the offline client always fsyncs"
    );
}
