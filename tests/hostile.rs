//! Hostile clients against the real daemon (README "Security"): they may not hurt anyone else.
//!
//! Checked: during a flood of 20,000 malformed lines over 20 connections, a 2 MiB line and
//! 1,000 idle connections, a well-behaved client keeps getting answers (its latency is
//! printed, not asserted: tests do not time things) and every malformed line gets its error;
//! afterwards the daemon's resident memory has grown by less than 5 MiB. A client that writes
//! and never reads is met with back-pressure, not unbounded memory. With its descriptors
//! exhausted (`prlimit --nofile=128`) the daemon does not spin (CPU time while saturated is
//! measured from /proc) and serves again once they are released.

#[macro_use]
mod support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn ping_latency(client: &mut Client) -> Duration {
    let started = Instant::now();
    let pong = client.call(&json!({"op": "ping"}));
    assert_eq!(pong["type"], "pong", "{pong}");
    started.elapsed()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn flood(backend: &'static str) {
    let d = Daemon::start(backend);
    let pid = d.pid();
    let mut good = d.client();
    let baseline = median((0..50).map(|_| ping_latency(&mut good)).collect());
    // Warm up whatever the daemon allocates once, then take the reference size.
    for _ in 0..3 {
        let mut c = d.client();
        for _ in 0..100 {
            c.send_raw(b"not json\n");
            let _ = c.recv();
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = rss_kib(pid).expect("VmRSS");

    let idle: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    let socket = d.socket.clone();
    let flooders: Vec<_> = (0..20)
        .map(|t| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket);
                for i in 0..1000 {
                    let junk = match i % 4 {
                        0 => "not json".to_string(),
                        1 => "{\"op\":\"nope\"}".to_string(),
                        2 => format!(
                            "{{\"op\":\"encrypt\",\"input\":\"rel/{t}\",\"output\":\"/x\"}}"
                        ),
                        _ => "[1,2,3]".to_string(),
                    };
                    c.send_raw(format!("{junk}\n").as_bytes());
                    let reply = c.recv();
                    assert_eq!(reply["type"], "error", "{reply}");
                }
            })
        })
        .collect();
    let big = std::thread::spawn({
        let socket = socket.clone();
        move || {
            let mut c = Client::connect(&socket);
            let mut line = vec![b'x'; 2 << 20];
            line.push(b'\n');
            c.send_raw(&line);
            let reply = c.recv();
            assert_eq!(reply["code"], "too_large", "{reply}");
            assert_eq!(c.call(&json!({"op": "ping"}))["type"], "pong");
        }
    });
    let mut during = Vec::new();
    while flooders.iter().any(|f| !f.is_finished()) {
        during.push(ping_latency(&mut good));
    }
    for f in flooders {
        f.join().expect("every malformed line got its error");
    }
    big.join()
        .expect("the 2 MiB line got too_large and the connection lived on");
    let during = median(during);
    println!("{backend}: ping median {baseline:?} before, {during:?} during the flood");
    drop(idle);
    // Let the daemon see the 1,000 closes.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(good.call(&json!({"op": "ping"}))["type"], "pong");
    let rss_after = rss_kib(pid).expect("VmRSS");
    println!("{backend}: RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 5 * 1024,
        "RSS grew by {} KiB over the flood",
        rss_after - rss_before
    );
}

fn writer_that_never_reads(backend: &'static str) {
    let d = Daemon::start(backend);
    let pid = d.pid();
    let rss_before = rss_kib(pid).expect("VmRSS");
    let mut stream = UnixStream::connect(&d.socket).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // Write requests and never read: the daemon must stop reading (our writes then block)
    // rather than pile up replies.
    let line = b"{\"op\":\"nope\"}\n".repeat(1000);
    let mut written = 0usize;
    while written < 200 << 20 {
        match stream.write(&line) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    assert!(
        written < 200 << 20,
        "the daemon read 200 MiB of requests without their replies being read"
    );
    let rss_after = rss_kib(pid).expect("VmRSS");
    println!(
        "{backend}: wrote {} KiB before back-pressure; RSS {rss_before} -> {rss_after} KiB",
        written >> 10
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "replies piled up: RSS {rss_before} -> {rss_after} KiB"
    );
    // Others are still served.
    assert_eq!(d.client().call(&json!({"op": "ping"}))["type"], "pong");
}

/// `prlimit --nofile=128` on the running daemon, then 500 connections held open.
fn out_of_descriptors(backend: &'static str) {
    let d = Daemon::start(backend);
    let pid = d.pid().to_string();
    let limited = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=128:"])
        .status()
        .unwrap();
    assert!(limited.success(), "prlimit failed");
    let held: Vec<UnixStream> = (0..500)
        .filter_map(|_| UnixStream::connect(&d.socket).ok())
        .collect();
    assert!(
        held.len() > 128,
        "only {} connections reached the backlog",
        held.len()
    );
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(d.pid());
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(d.pid()) - before;
    let ticks_per_sec = 100; // USER_HZ on Linux
    println!("{backend}: {spent} ticks of CPU in 2 s while out of descriptors");
    // Under 5% of one core over 2 s is 10 ticks.
    assert!(
        spent < 2 * ticks_per_sec / 20,
        "the daemon spins while out of descriptors: {spent} ticks in 2 s"
    );
    drop(held);
    let limited = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=4096:"])
        .status()
        .unwrap();
    assert!(limited.success());
    // Recovery: a new client is served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if try_ping(&d.socket).is_some_and(|reply| reply["type"] == "pong") {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon did not recover");
        std::thread::sleep(Duration::from_millis(50));
    }
}

both_backends!(flood, writer_that_never_reads, out_of_descriptors);
