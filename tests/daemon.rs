//! Drives the real `ringcryptd` binary over its Unix socket (docs/architecture.md, docs/protocol.md, README "Security"): every op,
//! the `socat` one-liners, many concurrent jobs, duplicate attach, cancel, malformed lines,
//! refused requests, SIGTERM under load and a second daemon on the same socket.
//!
//! Each daemon runs on its own temp directory with `--shards 2 --fsync never` (see
//! `support::Daemon`); dropping it sends SIGTERM and asserts exit 0. Every test runs under
//! both backends (`RINGCRYPT_BACKEND=uring` and `sync`): see `both_backends!` at the bottom.
//! Each test says in a comment what must stay intact and checks it.

#[macro_use]
mod support;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// Groups reply lines by the JSON text of their `id` (every reply must carry one).
fn by_id(lines: &[String]) -> HashMap<String, Vec<(String, Value)>> {
    let mut map: HashMap<String, Vec<(String, Value)>> = HashMap::new();
    for line in lines {
        let reply = parse_line(line);
        let id = reply
            .as_object()
            .unwrap()
            .get("id")
            .unwrap_or_else(|| panic!("reply without the request's id: {line}"))
            .to_string();
        map.entry(id).or_default().push((line.clone(), reply));
    }
    map
}

fn read_lines(client: &mut Client, n: usize) -> Vec<String> {
    (0..n).map(|_| client.recv_line()).collect()
}

/// The secrets in a key ring file (the hex after `secret = `).
fn secrets(keys: &Path) -> Vec<String> {
    fs::read_to_string(keys)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("secret = "))
        .map(|s| s.trim_matches('"').to_string())
        .collect()
}

/// 1. Every op over one pipelined connection, with ids of several JSON types.
///
/// Intact: every reply echoes its request's id exactly (same JSON value, `null` included);
/// `pong` reports 2 shards and the backend asked for; encrypt gives `accepted` then `done`
/// with the right byte counts; decrypt gives back the input; rewrap seals under the default
/// key (header bytes 16..32 = its id); `status`/`jobs` show the finished job as done; `stats`
/// has 2 shards; `keys` never carries a secret; `reload` picks up a key added to the file;
/// `cancel` of an unknown job is `not_found`.
fn every_op_pipelined(backend: &'static str) {
    let d = Daemon::start(backend);
    let ring = d.ring();
    let plain = bytes(300_000, 1);
    let input = d.root.join("a.txt");
    fs::write(&input, &plain).unwrap();
    let enc = d.root.join("a.rc");
    let dec = d.root.join("a.dec");
    let rw = d.root.join("a.rw");
    let mut c = d.client();

    // Phase 1: ping, encrypt, stats, keys, pipelined in one write.
    let mut encrypt = file_req("encrypt", &input, &enc);
    encrypt["id"] = json!("enc");
    encrypt["key"] = json!("k1");
    c.send_all(&[
        json!({"op": "ping", "id": 1}),
        encrypt,
        json!({"op": "stats", "id": null}),
        json!({"op": "keys", "id": -7}),
    ]);
    let replies = by_id(&read_lines(&mut c, 5));
    let mut ids: Vec<_> = replies.keys().cloned().collect();
    ids.sort();
    assert_eq!(
        ids,
        ["\"enc\"", "-7", "1", "null"],
        "ids echoed: {replies:?}"
    );

    let pong = &replies["1"][0].1;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert_eq!(pong["id"], json!(1));
    assert_eq!(pong["shards"], 2, "{pong}");
    assert_eq!(pong["backend"], backend, "{pong}");
    assert!(pong["version"].is_string(), "{pong}");

    let enc_replies = &replies["\"enc\""];
    assert_eq!(enc_replies.len(), 2, "{enc_replies:?}");
    let (accepted, done) = (&enc_replies[0].1, &enc_replies[1].1);
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    assert_eq!(done["type"], "done", "{done}");
    let enc_job = accepted["job"].as_str().expect("job id").to_string();
    assert_eq!(done["job"], enc_job.as_str());
    assert_eq!(done["bytes_in"], plain.len() as u64, "{done}");
    assert_eq!(
        done["bytes_out"],
        fs::metadata(&enc).unwrap().len(),
        "{done}"
    );
    assert_eq!(done["files_ok"], 1, "{done}");
    assert_eq!(
        Some(hex(&fs::read(&enc).unwrap()[16..32])),
        ring.by_name("k1").unwrap().id_hex(),
        "encrypt with key k1 names k1 in the header"
    );

    let (stats_line, stats) = &replies["null"][0];
    assert!(stats_line.contains("\"id\":null"), "{stats_line}");
    assert_eq!(stats["type"], "stats", "{stats}");
    assert_eq!(stats["shards"].as_array().unwrap().len(), 2, "{stats}");

    let (keys_line, keys) = &replies["-7"][0];
    assert_eq!(keys["type"], "keys", "{keys}");
    assert_eq!(keys["default"], "k2", "{keys}");
    for secret in secrets(&d.keys) {
        assert!(
            !keys_line.contains(&secret),
            "a secret leaked in `keys`: {keys_line}"
        );
    }
    assert!(!keys_line.contains("secret"), "{keys_line}");
    let listed: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["k1", "k2"], "{keys}");
    let k2_id = keys["keys"][1]["id"].as_str().unwrap().to_string();
    assert_eq!(Some(k2_id.clone()), ring.by_name("k2").unwrap().id_hex());

    // Phase 2: decrypt, rewrap, status, jobs, cancel of an unknown job.
    let mut decrypt = file_req("decrypt", &enc, &dec);
    decrypt["id"] = json!(2);
    let mut rewrap = file_req("rewrap", &enc, &rw);
    rewrap["id"] = json!("rw");
    c.send_all(&[
        decrypt,
        rewrap,
        json!({"op": "status", "id": 3, "job": enc_job}),
        json!({"op": "jobs", "id": "jobs"}),
        json!({"op": "cancel", "id": true, "job": "1-999999"}),
    ]);
    let replies = by_id(&read_lines(&mut c, 7));
    let mut ids: Vec<_> = replies.keys().cloned().collect();
    ids.sort();
    assert_eq!(ids, ["\"jobs\"", "\"rw\"", "2", "3", "true"], "{replies:?}");
    for id in ["2", "\"rw\""] {
        let r = &replies[id];
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0].1["type"], "accepted", "{r:?}");
        assert_eq!(r[1].1["type"], "done", "{r:?}");
        assert_eq!(r[0].1["job"], r[1].1["job"], "{r:?}");
    }
    assert_eq!(
        fs::read(&dec).unwrap(),
        plain,
        "decrypt gives back the input"
    );
    let rw_bytes = fs::read(&rw).unwrap();
    assert_eq!(
        hex(&rw_bytes[16..32]),
        k2_id,
        "rewrap seals under the default key k2"
    );
    assert_decrypts_to(&ring, &rw, &plain, &d.dir.path().join("scratch"));

    let status = &replies["3"][0].1;
    assert_eq!(status["type"], "status", "{status}");
    assert_eq!(status["job"], enc_job.as_str(), "{status}");
    assert_eq!(status["state"], "done", "{status}");

    let jobs = &replies["\"jobs\""][0].1;
    assert_eq!(jobs["type"], "jobs", "{jobs}");
    let entry = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == enc_job.as_str())
        .unwrap_or_else(|| panic!("`jobs` lists the encrypt job {enc_job}: {jobs}"));
    assert_eq!(entry["state"], "done", "{jobs}");

    let cancel = &replies["true"][0].1;
    assert_eq!(code(cancel), "not_found", "{cancel}");

    // Phase 3: add a key to the ring file, reload, and `keys` lists it.
    fs::OpenOptions::new()
        .append(true)
        .open(&d.keys)
        .unwrap()
        .write_all(keygen("k3").as_bytes())
        .unwrap();
    let reloaded = c.call(&json!({"op": "reload", "id": "r"}));
    assert_eq!(reloaded["type"], "reloaded", "{reloaded}");
    assert_eq!(reloaded["id"], "r");
    assert_eq!(reloaded["keys"], 3, "{reloaded}");
    let line = {
        c.send(&json!({"op": "keys", "id": 4}));
        c.recv_line()
    };
    let keys = parse_line(&line);
    assert_eq!(keys["id"], 4);
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "k3"),
        "`keys` after reload lists k3: {keys}"
    );
    for secret in secrets(&d.keys) {
        assert!(!line.contains(&secret), "a secret leaked in `keys`: {line}");
    }
}

fn socat_available() {
    if Command::new("socat").arg("-V").output().is_err() {
        panic!(
            "the `socat` binary is not installed (or not on PATH); this test drives the daemon \
             through it: install it (e.g. `apt-get install socat`); CI installs it"
        );
    }
}

/// 2. The README's socat one-liners work against the real daemon.
///
/// Intact: `echo '{"op":"ping"}' | socat - UNIX-CONNECT:SOCK` prints one `pong` line; an
/// encrypt through `socat -t 30` prints `accepted` then `done` (the daemon finishes the job
/// after the client half-closes) and the output decrypts to the input.
fn socat_one_liners(backend: &'static str) {
    socat_available();
    let d = Daemon::start(backend);
    let out = output_within(
        Command::new("sh")
            .arg("-c")
            .arg(r#"echo '{"op":"ping"}' | socat - UNIX-CONNECT:"$SOCK""#)
            .env("SOCK", &d.socket),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "socat ping: {out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout:?}");
    let pong = parse_line(lines[0]);
    assert_eq!(pong["type"], "pong", "{pong}");

    let plain = bytes(200_000, 2);
    let input = d.root.join("s.txt");
    let output = d.root.join("s.rc");
    fs::write(&input, &plain).unwrap();
    let request = file_req("encrypt", &input, &output).to_string();
    let out = output_within(
        Command::new("sh")
            .arg("-c")
            .arg(r#"printf '%s\n' "$REQ" | socat -t 30 - UNIX-CONNECT:"$SOCK""#)
            .env("SOCK", &d.socket)
            .env("REQ", &request),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "socat encrypt: {out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let types: Vec<String> = stdout
        .lines()
        .map(|l| parse_line(l)["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["accepted", "done"], "{stdout}");
    assert_decrypts_to(&d.ring(), &output, &plain, &d.dir.path().join("scratch"));
}

/// 3. 2,000 jobs from 16 concurrent connections, each connection pipelining 8 at a time.
///
/// Intact: every job ends `done` with bytes_in = its input's size; every output decrypts
/// (offline, with the library) to its own input; `stats` counts exactly 2,000 jobs, some on
/// each shard.
fn many_concurrent_jobs(backend: &'static str) {
    const JOBS: usize = 2000;
    const CONNS: usize = 16;
    const WINDOW: usize = 8;
    let d = Daemon::start(backend);
    let in_dir = d.root.join("in");
    let out_dir = d.root.join("out");
    fs::create_dir(&in_dir).unwrap();
    fs::create_dir(&out_dir).unwrap();
    let size = |i: usize| -> usize {
        match i {
            0 => 0,
            1 => 200 << 10,
            _ if i.is_multiple_of(25) => (i * 7919) % (200 << 10),
            _ => (i * 131) % 6000,
        }
    };
    for i in 0..JOBS {
        fs::write(in_dir.join(format!("{i}")), bytes(size(i), i as u64)).unwrap();
    }
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..CONNS {
            let (d, in_dir, out_dir) = (&d, &in_dir, &out_dir);
            s.spawn(move || {
                let mut c = d.client();
                let mine: Vec<usize> = (t..JOBS).step_by(CONNS).collect();
                for batch in mine.chunks(WINDOW) {
                    let reqs: Vec<Value> = batch
                        .iter()
                        .map(|&i| {
                            let mut r = file_req(
                                "encrypt",
                                &in_dir.join(format!("{i}")),
                                &out_dir.join(format!("{i}.rc")),
                            );
                            r["id"] = json!(i);
                            r
                        })
                        .collect();
                    c.send_all(&reqs);
                    let mut ended = 0;
                    while ended < batch.len() {
                        let reply = c.recv();
                        let i = reply["id"].as_u64().expect("numeric id echoed") as usize;
                        assert!(batch.contains(&i), "reply for an id not in flight: {reply}");
                        match reply["type"].as_str().unwrap() {
                            "accepted" => {}
                            "done" => {
                                assert_eq!(reply["bytes_in"], size(i) as u64, "{reply}");
                                ended += 1;
                            }
                            _ => panic!("job {i} did not end done: {reply}"),
                        }
                    }
                }
            });
        }
    });
    eprintln!("{backend}: {JOBS} jobs in {:?}", started.elapsed());

    let ring = d.ring();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (ring, d, in_dir, out_dir) = (&ring, &d, &in_dir, &out_dir);
            s.spawn(move || {
                let scratch = d.dir.path().join(format!("scratch-{t}"));
                for i in (t..JOBS).step_by(4) {
                    let plain = fs::read(in_dir.join(format!("{i}"))).unwrap();
                    assert_decrypts_to(ring, &out_dir.join(format!("{i}.rc")), &plain, &scratch);
                }
            });
        }
    });

    let stats = d.client().call(&json!({"op": "stats"}));
    let shards = stats["shards"].as_array().expect("stats has shards");
    assert_eq!(shards.len(), 2, "{stats}");
    let done: Vec<u64> = shards
        .iter()
        .map(|s| s["jobs_done"].as_u64().unwrap())
        .collect();
    assert!(done.iter().all(|&n| n > 0), "both shards did jobs: {stats}");
    assert_eq!(done.iter().sum::<u64>(), JOBS as u64, "{stats}");
    assert!(temp_files(d.dir.path()).is_empty());
}

/// 4. The same (op, input, output) from two connections at once attaches to one job.
///
/// Intact: both requests are answered `accepted` and `done` with the same job id; the output
/// exists once (no second file, no temp file) and decrypts to the input.
fn duplicate_requests_attach(backend: &'static str) {
    let d = Daemon::start(backend);
    let dir = d.root.join("dup");
    fs::create_dir(&dir).unwrap();
    let input = dir.join("big");
    let output = dir.join("big.rc");
    write_big(&input, 24);
    let mut a = d.client();
    let mut b = d.client();
    let mut req = file_req("encrypt", &input, &output);
    req["id"] = json!("a");
    a.send(&req);
    req["id"] = json!("b");
    b.send(&req);
    let ra = a.until_end();
    let rb = b.until_end();
    for (name, r) in [("a", &ra), ("b", &rb)] {
        assert_eq!(r.len(), 2, "{name}: {r:?}");
        assert_eq!(r[0]["type"], "accepted", "{name}: {r:?}");
        assert_eq!(r[1]["type"], "done", "{name}: {r:?}");
        assert_eq!(r[1]["id"], name);
        assert_eq!(r[0]["job"], r[1]["job"]);
    }
    assert_eq!(
        ra[0]["job"], rb[0]["job"],
        "the duplicate attached: {ra:?} {rb:?}"
    );
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["big", "big.rc"]);
    let plain = fs::read(&input).unwrap();
    assert_decrypts_to(&d.ring(), &output, &plain, &d.dir.path().join("scratch"));
}

/// 5. `cancel` of a running job from another connection.
///
/// Intact: the canceller gets `cancelled` for that job; the waiting client gets exactly one
/// `error` with code `cancelled`; no output and no temp file remain; the input is unchanged
/// in size; the daemon still answers.
fn cancel_running_job(backend: &'static str) {
    let d = Daemon::start(backend);
    let dir = d.root.join("cancel");
    fs::create_dir(&dir).unwrap();
    let input = dir.join("huge");
    let output = dir.join("huge.rc");
    write_big(&input, 512);
    let mut a = d.client();
    let mut b = d.client();
    let mut req = file_req("encrypt", &input, &output);
    req["id"] = json!("a");
    req["wait"] = json!(true);
    let accepted = a.call(&req);
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    let job = accepted["job"].as_str().unwrap().to_string();
    let cancelled = b.call(&json!({"op": "cancel", "id": "b", "job": job}));
    assert_eq!(cancelled["type"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["job"], job.as_str(), "{cancelled}");
    assert_eq!(cancelled["id"], "b");
    let end = a.recv();
    assert_eq!(code(&end), "cancelled", "{end}");
    assert_eq!(end["id"], "a");
    assert!(!output.exists(), "a cancelled job left its output");
    assert_eq!(temp_files(d.dir.path()), Vec::<PathBuf>::new());
    assert_eq!(fs::metadata(&input).unwrap().len(), 512 << 20);
    let status = b.call(&json!({"op": "status", "job": job}));
    assert_eq!(status["state"], "cancelled", "{status}");
    assert_eq!(a.call(&json!({"op": "ping"}))["type"], "pong");
}

/// 6. Malformed request lines.
///
/// Intact: each bad line gets exactly one `error` with the right code, the connection stays
/// usable (a `ping` on it answers next, so no second error was queued), and other
/// connections are served throughout.
fn malformed_lines(backend: &'static str) {
    let d = Daemon::start(backend);
    let mut other = d.client();
    let mut c = d.client();
    let file = d.root.join("f.txt");
    fs::write(&file, b"x").unwrap();
    let f = p(&file);
    let out = p(&d.root.join("f.rc")).to_string();
    let mut junk = bytes(8192, 6);
    junk.iter_mut().for_each(|b| {
        if *b == b'\n' {
            *b = 0xff;
        }
    });
    junk[0] = 0xfe;
    let mut huge = vec![b'a'; 1 << 20];
    huge[0] = b'{';
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"this is not json".to_vec(), "bad_request"),
        ("an array", b"[]".to_vec(), "bad_request"),
        (
            "unknown op",
            br#"{"op":"frobnicate"}"#.to_vec(),
            "unknown_op",
        ),
        (
            "missing input",
            json!({"op": "encrypt", "output": out})
                .to_string()
                .into_bytes(),
            "bad_request",
        ),
        (
            "mistyped overwrite",
            json!({"op": "encrypt", "input": f, "output": out, "overwrite": "yes"})
                .to_string()
                .into_bytes(),
            "bad_request",
        ),
        (
            "unknown field",
            json!({"op": "encrypt", "input": f, "output": out, "overwirte": true})
                .to_string()
                .into_bytes(),
            "bad_request",
        ),
        (
            "relative path",
            json!({"op": "encrypt", "input": "f.txt", "output": out})
                .to_string()
                .into_bytes(),
            "bad_request",
        ),
        ("a 1 MiB line", huge, "too_large"),
        ("binary junk", junk, "bad_request"),
    ];
    for (what, line, want) in cases {
        c.send_raw(&line);
        c.send_raw(b"\n");
        let reply = c.recv();
        assert_eq!(code(&reply), want, "{what}: {reply}");
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{reply}"
        );
        let pong = c.call(&json!({"op": "ping", "id": what}));
        assert_eq!(
            pong["type"], "pong",
            "after {what}, ping answers next: {pong}"
        );
        assert_eq!(pong["id"], what);
        assert_eq!(
            other.call(&json!({"op": "ping"}))["type"],
            "pong",
            "after {what}"
        );
    }
    assert!(!d.root.join("f.rc").exists());
    assert_eq!(d.client().call(&json!({"op": "ping"}))["type"], "pong");
}

/// 7. Requests the daemon must refuse.
///
/// Intact: each gets one `error` with the right code (`not_found`, `exists`, `bad_request`,
/// `unknown_key`, `auth_failed`, `forbidden_path`), and nothing under the root or outside it
/// changes (no output, no temp file; the existing output keeps its bytes).
fn refused_requests(backend: &'static str) {
    let d = Daemon::start(backend);
    let ring = d.ring();
    let root = &d.root;
    let plain = bytes(300_000, 7);
    let input = root.join("in.txt");
    fs::write(&input, &plain).unwrap();
    fs::write(root.join("existing.rc"), b"keep me").unwrap();
    fs::create_dir(root.join("sub")).unwrap();
    fs::write(d.outside.join("secret.txt"), b"outside").unwrap();
    std::os::unix::fs::symlink(d.outside.join("secret.txt"), root.join("link")).unwrap();
    std::os::unix::fs::symlink(&d.outside, root.join("linkdir")).unwrap();
    // Two tampered ciphertexts (made offline): a flipped byte in the first and in the last
    // chunk (the input spans 5 chunks of 64 KiB).
    let sealed = d.dir.path().join("sealed.rc");
    ringcrypt::offline::encrypt(
        &ring,
        &ringcrypt::offline::Job {
            input: &input,
            output: &sealed,
            key: None,
            format: ringcrypt::offline::Format::Ringcrypt,
            chunk_log2: 16,
            overwrite: false,
            durability: ringcrypt::output::Durability::None,
        },
    )
    .unwrap();
    let sealed = fs::read(&sealed).unwrap();
    for (name, at) in [
        ("tampered-first.rc", 200),
        ("tampered-last.rc", sealed.len() - 40),
    ] {
        let mut bad = sealed.clone();
        bad[at] ^= 0x01;
        fs::write(root.join(name), bad).unwrap();
    }
    let before = (snapshot(root), snapshot(&d.outside));

    let r = |name: &str| root.join(name);
    let mut wrong_key = file_req("encrypt", &input, &r("k.rc"));
    wrong_key["key"] = json!("no-such-key");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "missing input",
            file_req("encrypt", &r("nope"), &r("o1")),
            "not_found",
        ),
        (
            "existing output",
            file_req("encrypt", &input, &r("existing.rc")),
            "exists",
        ),
        (
            "missing output directory",
            file_req("encrypt", &input, &r("nodir/o.rc")),
            "not_found",
        ),
        (
            "input is a directory",
            file_req("encrypt", &r("sub"), &r("o2")),
            "bad_request",
        ),
        ("wrong key name", wrong_key, "unknown_key"),
        (
            "tampered first chunk",
            file_req("decrypt", &r("tampered-first.rc"), &r("o3")),
            "auth_failed",
        ),
        (
            "tampered last chunk",
            file_req("decrypt", &r("tampered-last.rc"), &r("o4")),
            "auth_failed",
        ),
        (
            "input outside the root",
            file_req("encrypt", &d.outside.join("secret.txt"), &r("o5")),
            "forbidden_path",
        ),
        (
            "output outside the root",
            file_req("encrypt", &input, &d.outside.join("o6")),
            "forbidden_path",
        ),
        (
            "symlink input escaping",
            file_req("encrypt", &r("link"), &r("o7")),
            "forbidden_path",
        ),
        (
            "output through a symlinked directory",
            file_req("encrypt", &input, &r("linkdir/o8")),
            "forbidden_path",
        ),
    ];
    let mut c = d.client();
    let mut failures = Vec::new();
    for (what, req, want) in cases {
        let replies = c.job(&req);
        let end = replies.last().unwrap();
        if end["type"] != "error" || end["code"] != want {
            failures.push(format!("{what}: want {want}, got {end}"));
            continue;
        }
        let message = end["message"].as_str().unwrap_or("");
        assert!(!message.is_empty(), "{what}: {end}");
    }
    let after = (snapshot(root), snapshot(&d.outside));
    assert!(
        failures.is_empty(),
        "wrong replies:\n{}",
        failures.join("\n")
    );
    assert!(
        before == after,
        "a refused request changed files: before {:?}\nafter {:?}",
        before
            .0
            .iter()
            .chain(&before.1)
            .map(|e| &e.0)
            .collect::<Vec<_>>(),
        after
            .0
            .iter()
            .chain(&after.1)
            .map(|e| &e.0)
            .collect::<Vec<_>>()
    );
    assert_eq!(fs::read(r("existing.rc")).unwrap(), b"keep me");
}

/// 8. SIGTERM while 50 jobs of 1 MiB are queued or running.
///
/// Intact: the daemon exits 0 within 35 s; every output that exists decrypts to its input
/// (finished or absent, never partial); no temp file remains anywhere.
fn sigterm_under_load(backend: &'static str) {
    let mut d = Daemon::start(backend);
    let dir = d.root.join("load");
    fs::create_dir(&dir).unwrap();
    let mut c = d.client();
    let mut reqs = Vec::new();
    for i in 0..50 {
        let input = dir.join(format!("{i}"));
        fs::write(&input, bytes(1 << 20, 1000 + i)).unwrap();
        let mut r = file_req("encrypt", &input, &dir.join(format!("{i}.rc")));
        r["id"] = json!(i);
        r["wait"] = json!(false);
        reqs.push(r);
    }
    c.send_all(&reqs);
    for _ in 0..50 {
        let reply = c.recv();
        assert_eq!(reply["type"], "accepted", "{reply}");
    }
    let (status, took) = d.stop(Duration::from_secs(40));
    assert!(
        status.success(),
        "exit after SIGTERM: {status}; log:\n{}",
        d.log_text()
    );
    assert!(took <= Duration::from_secs(35), "SIGTERM took {took:?}");
    let ring = d.ring();
    let mut finished = 0;
    for i in 0..50u64 {
        let out = dir.join(format!("{i}.rc"));
        if out.exists() {
            finished += 1;
            let plain = fs::read(dir.join(format!("{i}"))).unwrap();
            assert_decrypts_to(&ring, &out, &plain, &d.dir.path().join("scratch"));
        }
    }
    eprintln!("{backend}: {finished}/50 outputs finished before exit ({took:?})");
    assert_eq!(temp_files(d.dir.path()), Vec::<PathBuf>::new());
    assert!(!d.socket.exists(), "the socket file is removed on exit");
}

/// 9. A second daemon on a socket in use.
///
/// Intact: the second exits non-zero saying the socket is in use, without disturbing the
/// first, which still answers ping on the same path.
fn second_daemon_refused(backend: &'static str) {
    let d = Daemon::start(backend);
    let log = d.dir.path().join("second.log");
    let mut second = d.command(&log).spawn().expect("ringcryptd starts");
    let status = match wait_within(&mut second, Duration::from_secs(10)) {
        Some(status) => status,
        None => {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second daemon on {} kept running", d.socket.display());
        }
    };
    let message = fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "second daemon: {status}; {message}");
    assert!(
        message.contains("in use"),
        "second daemon's message: {message:?}"
    );
    let pong = d.client().call(&json!({"op": "ping"}));
    assert_eq!(pong["type"], "pong", "{pong}");
}

/// 10. A client that disconnects right after sending a job does not cancel it.
///
/// Intact: the job still runs to the end: the output appears, complete, and decrypts to the
/// input; `status` from a new connection says `done`; no temp file remains.
fn disconnect_does_not_cancel(backend: &'static str) {
    let d = Daemon::start(backend);
    let input = d.root.join("leave.bin");
    let output = d.root.join("leave.bin.rc");
    write_big(&input, 16);
    let mut a = d.client();
    let mut req = file_req("encrypt", &input, &output);
    req["id"] = json!("gone");
    a.send(&req);
    let accepted = a.recv();
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    let job = accepted["job"].as_str().unwrap().to_string();
    drop(a);
    let mut b = d.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = b.call(&json!({"op": "status", "job": job}));
        assert_eq!(status["type"], "status", "{status}");
        if status["state"] == "done" {
            break;
        }
        assert!(
            status["state"] == "running" || status["state"] == "queued",
            "the job must go on after its client left: {status}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "job {job} never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let plain = fs::read(&input).unwrap();
    assert_decrypts_to(&d.ring(), &output, &plain, &d.dir.path().join("scratch"));
    assert!(temp_files(d.dir.path()).is_empty());
}

/// 11. SIGHUP reloads the key ring; a ring that no longer parses leaves the old one in force.
///
/// Intact: after a good reload `keys` lists the added key and it encrypts; after a bad one
/// the daemon still serves with the previous ring.
fn sighup_reloads_keys(backend: &'static str) {
    let d = Daemon::start(backend);
    let mut text = fs::read_to_string(&d.keys).unwrap();
    text.push_str(&keygen("hup"));
    fs::write(&d.keys, &text).unwrap();
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &d.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    hup();
    let mut c = d.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = c.call(&json!({"op": "keys"}));
        if keys.to_string().contains("\"hup\"") {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP never reloaded: {keys}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let input = d.root.join("hup.txt");
    fs::write(&input, b"after reload").unwrap();
    let mut req = file_req("encrypt", &input, &d.root.join("hup.rc"));
    req["key"] = json!("hup");
    let replies = c.job(&req);
    assert_eq!(replies.last().unwrap()["type"], "done", "{replies:?}");
    // A broken ring: the reload is refused and the daemon keeps the one it has.
    fs::write(&d.keys, "this is not toml [").unwrap();
    hup();
    std::thread::sleep(Duration::from_millis(300));
    let keys = c.call(&json!({"op": "keys"}));
    assert!(
        keys.to_string().contains("\"hup\""),
        "the old ring was dropped: {keys}"
    );
    assert_eq!(c.call(&json!({"op": "ping"}))["type"], "pong");
}

both_backends!(
    every_op_pipelined,
    socat_one_liners,
    many_concurrent_jobs,
    duplicate_requests_attach,
    cancel_running_job,
    malformed_lines,
    refused_requests,
    sigterm_under_load,
    second_daemon_refused,
    disconnect_does_not_cancel,
    sighup_reloads_keys,
);
