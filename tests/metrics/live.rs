//! A live daemon's `/metrics` endpoint: what a known workload leaves in the counters, the
//! names the dashboard and the rules use, and `--metrics off`.

use std::collections::BTreeSet;
use std::fs;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::contrib::{names_used, promtool};
use crate::exposition::{Scrape, free_port, listening_ports, parse_scrape, parse_value, scrape};
use crate::support::*;
use crate::{ALERTS, BUCKETS, DASHBOARD, FAMILIES, SETTLE};

/// A daemon with every default but `--metrics SETTING`.
pub(crate) fn metrics_daemon(backend: &'static str, setting: &str) -> Daemon {
    Daemon::builder(backend).metrics(setting).start()
}

/// What the known workload must leave in the counters.
struct Expected {
    encrypt_ok: f64,
    decrypt_ok: f64,
    decrypt_failed: f64,
    verify_ok: f64,
    verify_failed: f64,
    bytes_read: f64,
    bytes_written: f64,
}

impl Expected {
    fn met_by(&self, s: &Scrape) -> bool {
        s.sum(
            "ringcrypt_jobs_total",
            &[("op", "encrypt"), ("result", "ok")],
        ) == self.encrypt_ok
            && s.sum(
                "ringcrypt_jobs_total",
                &[("op", "decrypt"), ("result", "ok")],
            ) == self.decrypt_ok
            && s.sum(
                "ringcrypt_jobs_total",
                &[("op", "decrypt"), ("result", "failed")],
            ) == self.decrypt_failed
            && s.sum("ringcrypt_bytes_read_total", &[]) == self.bytes_read
            && s.sum("ringcrypt_bytes_written_total", &[]) == self.bytes_written
            && s.sum(
                "ringcrypt_jobs_total",
                &[("op", "verify"), ("result", "failed")],
            ) == self.verify_failed
            && s.sum(
                "ringcrypt_verify_failures_total",
                &[("code", "auth_failed")],
            ) == self.verify_failed
            && s.sum("ringcrypt_errors_total", &[("code", "auth_failed")]) == 2.0
            && s.sum("ringcrypt_errors_total", &[("code", "bad_request")]) == 1.0
            && s.sum("ringcrypt_job_duration_seconds_count", &[("op", "encrypt")])
                == self.encrypt_ok
            && s.sum("ringcrypt_jobs_inflight", &[]) == 0.0
            && s.sum("ringcrypt_queue_depth", &[]) == 0.0
    }
}

/// Runs the known workload on `d` through `client`; returns what it must have counted.
///
/// N encrypts of files of known sizes (0 bytes to several chunks, spread over both shards
/// by their paths), M decrypts of some of the results, one decrypt of a tampered
/// single-chunk file (`auth_failed`: the whole ciphertext is read, its tag fails, nothing
/// is written) and one malformed line (`bad_request`).
fn run_workload(d: &Daemon, client: &mut Client) -> Expected {
    let sizes = [0usize, 1, 1000, 4097, 65_536, 65_537, 300_000];
    let mut read = 0u64;
    let mut written = 0u64;
    let mut sealed = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let input = d.root.join(format!("plain-{i}.bin"));
        let output = d.root.join(format!("plain-{i}.bin.rcrypt"));
        fs::write(&input, bytes(size, i as u64 + 1)).unwrap();
        let replies = client.job(&file_req("encrypt", &input, &output));
        let last = replies.last().unwrap();
        assert_eq!(last["type"], "done", "encrypt {size} bytes: {replies:?}");
        read += size as u64;
        let out_len = fs::metadata(&output).unwrap().len();
        written += out_len;
        sealed.push((output, size as u64, out_len));
    }
    let decrypted = [0usize, 2, 4, 6];
    for &i in &decrypted {
        let (input, plain_len, ct_len) = &sealed[i];
        let output = d.root.join(format!("back-{i}.bin"));
        let replies = client.job(&file_req("decrypt", input, &output));
        assert_eq!(
            replies.last().unwrap()["type"],
            "done",
            "decrypt: {replies:?}"
        );
        assert_eq!(fs::metadata(&output).unwrap().len(), *plain_len);
        read += ct_len;
        written += plain_len;
    }

    // A single-chunk file with its final tag's last byte flipped.
    let (source, _, ct_len) = &sealed[2];
    let mut tampered = fs::read(source).unwrap();
    *tampered.last_mut().unwrap() ^= 1;
    let tampered_path = d.root.join("tampered.rcrypt");
    fs::write(&tampered_path, &tampered).unwrap();
    let out = d.root.join("tampered.out");
    let replies = client.job(&file_req("decrypt", &tampered_path, &out));
    assert_eq!(code(replies.last().unwrap()), "auth_failed", "{replies:?}");
    assert!(!out.exists());
    read += ct_len;

    // A verify of a good file and of the tampered one: each reads the whole file, writes
    // nothing; the second counts as a verify failure and an auth_failed error reply.
    let (good, _, good_len) = &sealed[3];
    let replies = client.job(&json!({"op": "verify", "input": p(good)}));
    assert_eq!(replies.last().unwrap()["type"], "done", "{replies:?}");
    read += good_len;
    let replies = client.job(&json!({"op": "verify", "input": p(&tampered_path)}));
    assert_eq!(code(replies.last().unwrap()), "auth_failed", "{replies:?}");
    read += ct_len;

    client.send_raw(b"this is not json\n");
    assert_eq!(code(&client.recv()), "bad_request");

    Expected {
        encrypt_ok: sizes.len() as f64,
        decrypt_ok: decrypted.len() as f64,
        decrypt_failed: 1.0,
        verify_ok: 1.0,
        verify_failed: 1.0,
        bytes_read: read as f64,
        bytes_written: written as f64,
    }
}

/// The metrics of a known workload, checked against what it did.
pub(crate) fn scrape_counts_the_workload(backend: &'static str) {
    let port = free_port();
    let d = metrics_daemon(backend, &format!("127.0.0.1:{port}"));
    assert_eq!(
        listening_ports(d.pid()),
        vec![port],
        "the daemon must listen on the metrics port and nothing else"
    );

    // As soon as the daemon answers ping, a scrape has build info and both shards' gauges.
    let first = parse_scrape(&scrape(port));
    assert!(
        first.matching("ringcrypt_build_info", &[]).len() == 1
            && first.matching("ringcrypt_queue_capacity", &[]).len() == 2,
        "the daemon answers ping before its metrics are complete (build_info and every \
         shard's series must be recorded before the socket accepts); first scrape:\n{}",
        first.text
    );

    let mut client = Client::connect(&d.socket);
    let want = run_workload(&d, &mut client);

    // Counters may move just after the reply; wait (bounded) for the expected values.
    let deadline = Instant::now() + SETTLE;
    let (body, s) = loop {
        let body = scrape(port);
        let s = parse_scrape(&body);
        if want.met_by(&s) || Instant::now() >= deadline {
            break (body, s);
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    // The text format is clean: promtool's linter has nothing to say.
    let (ok, stdout, stderr) = promtool(&["check", "metrics"], body.as_bytes());
    assert!(
        ok && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics (exit ok: {ok}):\n{stdout}{stderr}\nscrape:\n{body}"
    );

    // Every family of the contract, with its type and a HELP line; no sample without both.
    for (family, kind) in FAMILIES {
        assert_eq!(
            s.types.get(family).map(String::as_str),
            Some(kind),
            "family {family} must be a {kind}; scrape:\n{body}"
        );
    }
    for family in s.types.keys() {
        assert!(s.help.contains(family), "no # HELP for {family}");
    }
    for sample in &s.samples {
        let family = s.family_of(&sample.name);
        assert!(
            s.types.contains_key(family) && s.help.contains(family),
            "sample {} has no # TYPE / # HELP",
            sample.name
        );
    }

    // Jobs by op and result.
    let jobs = |op, result| s.sum("ringcrypt_jobs_total", &[("op", op), ("result", result)]);
    assert_eq!(jobs("encrypt", "ok"), want.encrypt_ok, "encrypt ok\n{body}");
    assert_eq!(jobs("decrypt", "ok"), want.decrypt_ok, "decrypt ok\n{body}");
    assert_eq!(
        jobs("decrypt", "failed"),
        want.decrypt_failed,
        "decrypt failed\n{body}"
    );
    assert_eq!(
        s.sum("ringcrypt_jobs_total", &[]),
        want.encrypt_ok
            + want.decrypt_ok
            + want.decrypt_failed
            + want.verify_ok
            + want.verify_failed,
        "no other job ended (no rewrap, nothing cancelled)\n{body}"
    );
    assert_eq!(jobs("verify", "ok"), want.verify_ok, "verify ok\n{body}");
    assert_eq!(
        s.sum(
            "ringcrypt_verify_failures_total",
            &[("code", "auth_failed")]
        ),
        want.verify_failed,
        "the tampered file's verify\n{body}"
    );
    assert_eq!(
        s.sum("ringcrypt_verify_failures_total", &[]),
        want.verify_failed,
        "no other verify failure\n{body}"
    );
    for sample in s.matching("ringcrypt_jobs_total", &[]) {
        let op = sample.labels.get("op").map(String::as_str);
        let result = sample.labels.get("result").map(String::as_str);
        assert!(
            matches!(op, Some("encrypt" | "decrypt" | "rewrap" | "verify"))
                && matches!(result, Some("ok" | "failed" | "cancelled")),
            "unexpected labels {:?}",
            sample.labels
        );
    }

    // Bytes, summed over shards.
    assert_eq!(
        s.sum("ringcrypt_bytes_read_total", &[]),
        want.bytes_read,
        "bytes read = inputs' sizes (the whole ciphertext for decrypts)\n{body}"
    );
    assert_eq!(
        s.sum("ringcrypt_bytes_written_total", &[]),
        want.bytes_written,
        "bytes written = outputs' sizes (nothing for the failed decrypt)\n{body}"
    );

    // Error replies by wire code: exactly the two provoked.
    assert_eq!(
        s.sum("ringcrypt_errors_total", &[("code", "auth_failed")]),
        2.0,
        "the failed decrypt and the failed verify"
    );
    assert_eq!(
        s.sum("ringcrypt_errors_total", &[("code", "bad_request")]),
        1.0
    );
    assert_eq!(s.sum("ringcrypt_errors_total", &[]), 3.0, "{body}");

    // The latency histogram: the contract's buckets, cumulative, +Inf = count.
    let count = s.one("ringcrypt_job_duration_seconds_count", &[("op", "encrypt")]);
    assert_eq!(count, want.encrypt_ok, "histogram count for encrypt");
    assert_eq!(
        s.one("ringcrypt_job_duration_seconds_count", &[("op", "decrypt")]),
        want.decrypt_ok + want.decrypt_failed,
        "decrypt durations: the ok and the failed job"
    );
    let mut buckets: Vec<(f64, f64)> = s
        .matching(
            "ringcrypt_job_duration_seconds_bucket",
            &[("op", "encrypt")],
        )
        .iter()
        .map(|b| (parse_value(&b.labels["le"]), b.value))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let les: Vec<f64> = buckets.iter().map(|b| b.0).collect();
    let mut want_les = BUCKETS.to_vec();
    want_les.push(f64::INFINITY);
    assert_eq!(les, want_les, "the histogram's buckets");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "buckets cumulative"
    );
    assert_eq!(buckets.last().unwrap().1, count, "+Inf bucket = count");
    let sum = s.one("ringcrypt_job_duration_seconds_sum", &[("op", "encrypt")]);
    assert!(sum > 0.0 && sum < 60.0, "encrypt duration sum {sum}");

    // Per-shard gauges: two shards, queue bound 1024, nothing queued or running now.
    let shards: BTreeSet<&String> = s
        .matching("ringcrypt_queue_capacity", &[])
        .iter()
        .map(|x| &x.labels["shard"])
        .collect();
    assert_eq!(
        shards.len(),
        2,
        "queue_capacity for each of 2 shards\n{body}"
    );
    for sample in s.matching("ringcrypt_queue_capacity", &[]) {
        assert_eq!(sample.value, 1024.0, "queue capacity {:?}", sample.labels);
    }
    assert_eq!(s.sum("ringcrypt_queue_depth", &[]), 0.0);
    assert_eq!(s.sum("ringcrypt_jobs_inflight", &[]), 0.0);
    let crypto = s.sum("ringcrypt_crypto_seconds_total", &[]);
    assert!(crypto > 0.0 && crypto < 60.0, "crypto seconds {crypto}");
    // Bytes moved on both shards (the inputs' paths hash to both).
    let read_shards = s
        .matching("ringcrypt_bytes_read_total", &[])
        .iter()
        .filter(|x| x.value > 0.0)
        .count();
    assert_eq!(read_shards, 2, "both shards read bytes\n{body}");

    // Our one client connection is open.
    assert_eq!(s.one("ringcrypt_connections_active", &[]), 1.0, "{body}");

    // Build info names the version and the backend pong reported.
    let info = s.matching("ringcrypt_build_info", &[]);
    assert_eq!(info.len(), 1, "{body}");
    assert_eq!(info[0].value, 1.0);
    assert_eq!(
        info[0].labels.get("version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let reported = d.pong["backend"].as_str().unwrap_or("");
    let pong_backend = if reported == "io_uring" {
        "uring"
    } else {
        reported
    };
    assert_eq!(
        info[0].labels.get("backend").map(String::as_str),
        Some(pong_backend),
        "build_info backend vs pong's {reported:?}"
    );
    assert_eq!(pong_backend, backend, "the backend asked for runs");

    // Closing the client shows in connections_active.
    drop(client);
    let deadline = Instant::now() + SETTLE;
    loop {
        let s = parse_scrape(&scrape(port));
        let open = s.one("ringcrypt_connections_active", &[]);
        if open == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "connections_active stays {open}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every metric name the dashboard and the alert rules use is one a live daemon exports.
pub(crate) fn dashboard_and_alerts_use_only_exported_metrics(backend: &'static str) {
    let port = free_port();
    let d = metrics_daemon(backend, &format!("127.0.0.1:{port}"));
    // One job and one error reply: the exporter only prints a labelled family once it has
    // a series (ringcrypt_errors_total is absent until the first error).
    let mut client = Client::connect(&d.socket);
    let input = d.root.join("one.bin");
    fs::write(&input, bytes(5000, 7)).unwrap();
    let replies = client.job(&file_req("encrypt", &input, &d.root.join("one.bin.rcrypt")));
    assert_eq!(replies.last().unwrap()["type"], "done", "{replies:?}");
    client.send_raw(b"not json\n");
    assert_eq!(code(&client.recv()), "bad_request");
    let scraped = parse_scrape(&scrape(port));
    let exported: BTreeSet<String> = names_used(&scraped.text);
    assert!(!exported.is_empty());

    for (file, what) in [(DASHBOARD, "dashboard"), (ALERTS, "alert rules")] {
        let used = names_used(&fs::read_to_string(file).unwrap());
        assert!(!used.is_empty(), "{what} names no ringcrypt metric");
        let missing: Vec<&String> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "the {what} ({file}) use metrics the daemon does not export: {missing:?}\n\
             exported: {exported:?}"
        );
    }
    // And the contract's families are all there (the dashboard covers them all).
    let used = names_used(&fs::read_to_string(DASHBOARD).unwrap());
    for (family, _) in FAMILIES {
        assert!(
            used.contains(family),
            "the dashboard does not show {family}"
        );
    }
    let _ = &d.dir;
}

/// `--metrics off`: no TCP listener at all, and the daemon still serves.
pub(crate) fn metrics_off_listens_nowhere(backend: &'static str) {
    let d = metrics_daemon(backend, "off");
    assert_eq!(
        listening_ports(d.pid()),
        Vec::<u16>::new(),
        "--metrics off must not listen on any TCP port"
    );
    let mut client = Client::connect(&d.socket);
    let pong = client.call(&json!({"op": "ping"}));
    assert_eq!(pong["type"], "pong", "{pong}");
    let input = d.root.join("x.bin");
    fs::write(&input, bytes(100, 3)).unwrap();
    let replies = client.job(&file_req("encrypt", &input, &d.root.join("x.bin.rcrypt")));
    assert_eq!(replies.last().unwrap()["type"], "done", "{replies:?}");
    assert_eq!(listening_ports(d.pid()), Vec::<u16>::new());
}

/// `--metrics off` with the port it would otherwise use: connecting there fails.
#[test]
fn metrics_off_port_refuses_connections() {
    let port = free_port();
    let on = metrics_daemon("sync", &format!("127.0.0.1:{port}"));
    drop(on);
    // The same port, now with metrics off: nothing answers there.
    let d = metrics_daemon("sync", "off");
    assert!(
        TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(2)
        )
        .is_err(),
        "something listens on {port} although metrics are off"
    );
    let pong = Client::connect(&d.socket).call(&json!({"op": "ping"}));
    assert_eq!(pong["type"], "pong");
}

/// With `--fsync always`, jobs that link into one directory while its fsync runs share the
/// next one. Intact: every output of a 300-file flat tree is there and verifies, every file
/// was answered after an fsync of its directory (the counter moved), and the directory was
/// fsynced fewer times than there are files.
pub(crate) fn directory_fsyncs_are_batched(backend: &'static str) {
    const FILES: usize = 300;
    let port = free_port();
    let d = Daemon::builder(backend)
        .metrics(&format!("127.0.0.1:{port}"))
        .fsync("always")
        .start();
    let src = d.root.join("flat");
    fs::create_dir(&src).unwrap();
    for i in 0..FILES {
        fs::write(src.join(format!("f{i:03}")), format!("file {i}")).unwrap();
    }
    let enc = d.root.join("flat.enc");
    let end = d
        .client()
        .job(&tree_req("encrypt", &src, &enc, "t"))
        .pop()
        .unwrap();
    assert_eq!(end["files_ok"], FILES as u64, "{end}");
    let ring = d.ring();
    for i in (0..FILES).step_by(37) {
        let plain = format!("file {i}");
        let sealed = enc.join(format!("f{i:03}.rcrypt"));
        assert_decrypts_to(&ring, &sealed, plain.as_bytes(), &d.scratch().join("x"));
    }
    let s = parse_scrape(&scrape(port));
    let fsyncs = s.sum("ringcrypt_dir_fsyncs_total", &[]);
    println!("{backend}: {FILES} files linked into one directory, {fsyncs} directory fsyncs");
    assert!(fsyncs >= 1.0, "no directory fsync was counted");
    assert!(
        fsyncs < FILES as f64,
        "{fsyncs} directory fsyncs for {FILES} files: not batched"
    );
}
