//! The `/metrics` endpoint as an HTTP server (README "Metrics, dashboard and alerts"): idle
//! connections never stall a scrape, `HEAD` and query strings are answered as Prometheus and
//! `curl -I` send them, other paths and methods get their proper status, and the first scrape
//! already has every family, the job histogram and the `process_*` set included.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::FAMILIES;
use crate::exposition::{free_port, parse_scrape, scrape};
use crate::live::metrics_daemon;
use crate::support::open_fds;

/// Idle connections the issue holds open while scraping.
const IDLE_CONNECTIONS: usize = 50;
/// The bound the issue sets on a scrape made while they are open.
const SCRAPE_BOUND: Duration = Duration::from_secs(1);

/// The `process_*` families, with their types.
const PROCESS_FAMILIES: [(&str, &str); 6] = [
    ("process_cpu_seconds_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_virtual_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_max_fds", "gauge"),
    ("process_start_time_seconds", "gauge"),
];

/// An HTTP response: the status code, the lower-cased header lines and the body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` (a whole HTTP/1.1 request with `Connection: close`) and reads the
/// response to EOF.
fn exchange(port: u16, request: &str) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("reading the answer to {request:?}: {e}"));
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

fn request(method: &str, target: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
}

/// 50 connections that send nothing, and 50 that send half a request head, are open while
/// the scrapes run: each scrape still completes within a second, and all the connections are
/// still open afterwards (the server did not make room by closing them early).
pub(crate) fn idle_connections_do_not_stall_a_scrape(backend: &'static str) {
    let port = free_port();
    let d = metrics_daemon(backend, &format!("127.0.0.1:{port}"));
    let mut idle: Vec<TcpStream> = (0..IDLE_CONNECTIONS)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for _ in 0..IDLE_CONNECTIONS {
        let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
        half.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
        idle.push(half);
    }
    // Let the daemon accept them all before timing.
    std::thread::sleep(Duration::from_millis(200));
    for round in 0..5 {
        let started = Instant::now();
        let body = scrape(port);
        let took = started.elapsed();
        assert!(
            took < SCRAPE_BOUND,
            "scrape {round} took {took:?} with {} idle connections open",
            idle.len()
        );
        assert!(
            parse_scrape(&body).one("ringcrypt_connections_active", &[]) == 0.0,
            "a scrape with the families in it:\n{body}"
        );
    }
    // Every idle connection is still open: a read finds neither EOF nor data.
    for (i, stream) in idle.iter_mut().enumerate() {
        stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("idle connection {i} was answered or closed: {other:?}"),
        }
    }
    // The daemon itself is untouched by all this.
    let pong = d.client().call(&serde_json::json!({"op": "ping"}));
    assert_eq!(pong["type"], "pong", "{pong}");
    drop(idle);
}

/// The endpoint's bound on open connections (`metrics::http::MAX_CONNECTIONS`).
const MAX_CONNECTIONS: usize = 256;

/// A flood of 300 idle connections: the daemon holds at most 256 of them (its descriptor count
/// shows it) and closes the rest at once; once they are gone, scrapes work again at once.
pub(crate) fn connections_past_the_bound_are_closed(backend: &'static str) {
    let port = free_port();
    let d = metrics_daemon(backend, &format!("127.0.0.1:{port}"));
    scrape(port);
    let before = open_fds(d.pid()).unwrap();
    let flood: Vec<TcpStream> = (0..MAX_CONNECTIONS + 44)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let held = open_fds(d.pid()).unwrap().saturating_sub(before);
    assert!(
        (MAX_CONNECTIONS - 8..=MAX_CONNECTIONS).contains(&held),
        "with {} connections open the daemon holds {held} more descriptors",
        flood.len()
    );
    let mut closed = 0;
    for mut stream in flood.iter() {
        stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        if matches!(stream.read(&mut buf), Ok(0)) {
            closed += 1;
        }
    }
    assert!(
        closed >= flood.len() - MAX_CONNECTIONS,
        "only {closed} of {} connections were closed past the bound",
        flood.len()
    );
    drop(flood);
    // The daemon lets go of them as it reads their end, and scrapes again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_fds(d.pid()).unwrap() > before + 2 {
        assert!(
            Instant::now() < deadline,
            "the daemon still holds {} descriptors more than before the flood",
            open_fds(d.pid()).unwrap() - before
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(scrape(port).contains("ringcrypt_build_info"));
}

/// `HEAD /metrics` (what `curl -I` sends) gets the headers of a scrape and no body;
/// `/metrics?x=1` is `/metrics`; other paths are 404 and other methods 405.
pub(crate) fn head_query_strings_and_wrong_requests(backend: &'static str) {
    let port = free_port();
    let _d = metrics_daemon(backend, &format!("127.0.0.1:{port}"));

    let head = exchange(port, &request("HEAD", "/metrics"));
    assert_eq!(head.status, 200, "HEAD /metrics");
    assert!(head.body.is_empty(), "HEAD has no body: {:?}", head.body);
    assert!(
        head.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "HEAD content type: {:?}",
        head.headers
    );
    let length: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("HEAD without a content length: {:?}", head.headers));
    assert!(
        length > 1000,
        "HEAD announces a scrape's length, not {length}"
    );

    for target in [
        "/metrics?x=1",
        "/metrics?",
        "/metrics?name[]=ringcrypt_jobs_total",
    ] {
        let get = exchange(port, &request("GET", target));
        assert_eq!(get.status, 200, "GET {target}");
        let text = String::from_utf8(get.body).unwrap();
        let s = parse_scrape(&text);
        for (family, kind) in FAMILIES {
            assert_eq!(
                s.types.get(family).map(String::as_str),
                Some(kind),
                "GET {target} lacks {family}:\n{text}"
            );
        }
    }

    for target in ["/", "/metric", "/metrics/x", "/favicon.ico"] {
        let got = exchange(port, &request("GET", target));
        assert_eq!(got.status, 404, "GET {target}");
    }
    for method in ["POST", "PUT", "DELETE"] {
        let got = exchange(port, &request(method, "/metrics"));
        assert_eq!(got.status, 405, "{method} /metrics");
        assert_eq!(got.header("allow"), Some("GET, HEAD"), "{method}");
    }
    // Garbage is refused with 400 and the endpoint goes on.
    let garbage = exchange(port, "\x01\x02 nonsense\r\n\r\n");
    assert_eq!(garbage.status, 400, "a line that is not HTTP");
    assert!(scrape(port).contains("ringcrypt_build_info"));
}

/// The first scrape, before any request: every family of the contract with its series (the
/// job histogram per op, empty), and the `process_*` set with values `/proc` agrees with.
pub(crate) fn first_scrape_has_every_family(backend: &'static str) {
    let port = free_port();
    let d = metrics_daemon(backend, &format!("127.0.0.1:{port}"));
    let body = scrape(port);
    let s = parse_scrape(&body);
    for (family, kind) in FAMILIES.iter().chain(PROCESS_FAMILIES.iter()) {
        assert_eq!(
            s.types.get(*family).map(String::as_str),
            Some(*kind),
            "the first scrape lacks {family} ({kind}):\n{body}"
        );
        assert!(s.help.contains(*family), "no # HELP for {family}");
        let samples = s
            .samples
            .iter()
            .filter(|x| s.family_of(&x.name) == *family)
            .count();
        assert!(samples > 0, "{family} has no sample:\n{body}");
    }
    for op in ["encrypt", "decrypt", "rewrap"] {
        assert_eq!(
            s.one("ringcrypt_job_duration_seconds_count", &[("op", op)]),
            0.0,
            "{op} histogram"
        );
        assert_eq!(
            s.one(
                "ringcrypt_job_duration_seconds_bucket",
                &[("op", op), ("le", "+Inf")]
            ),
            0.0
        );
    }
    for code in ["bad_request", "auth_failed", "forbidden_path"] {
        assert_eq!(s.one("ringcrypt_errors_total", &[("code", code)]), 0.0);
    }

    // The process figures, checked against what /proc says about the daemon.
    let pid = d.pid();
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as f64;
    let open = s.one("process_open_fds", &[]);
    assert!(
        (open - fds).abs() <= 2.0,
        "process_open_fds {open}, /proc/{pid}/fd has {fds}"
    );
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft: f64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("Max open files in /proc/PID/limits");
    assert_eq!(s.one("process_max_fds", &[]), soft, "the soft limit");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
    };
    // Read a moment apart, so the figures may differ by what the daemon mapped meanwhile.
    let vm = s.one("process_virtual_memory_bytes", &[]);
    let status_vm = kib("VmSize:") * 1024.0;
    assert!(
        vm > 0.0 && (vm - status_vm).abs() < 64.0 * 1024.0 * 1024.0,
        "virtual memory {vm}, /proc says {status_vm}"
    );
    let rss = s.one("process_resident_memory_bytes", &[]);
    let status_rss = kib("VmRSS:") * 1024.0;
    assert!(
        rss > 0.0 && (rss - status_rss).abs() < 16.0 * 1024.0 * 1024.0,
        "resident memory {rss}, /proc says {status_rss}"
    );
    let cpu = s.one("process_cpu_seconds_total", &[]);
    assert!((0.0..60.0).contains(&cpu), "cpu seconds {cpu}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = s.one("process_start_time_seconds", &[]);
    assert!(
        started <= now + 2.0 && started >= now - 120.0,
        "start time {started}, now {now}"
    );
    // The figures move: the CPU counter never goes back.
    let later = parse_scrape(&scrape(port)).one("process_cpu_seconds_total", &[]);
    assert!(later >= cpu, "cpu seconds went from {cpu} to {later}");
}

/// A scraper that closes its side right after the request (HTTP/1.0 style) still gets the
/// whole answer, every time (the end of its stream can race the answer; 20 tries).
#[test]
fn half_closed_request_is_answered() {
    let port = free_port();
    let _d = metrics_daemon("sync", &format!("127.0.0.1:{port}"));
    for attempt in 0..20 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        assert!(
            raw.starts_with("HTTP/1.0 200") || raw.starts_with("HTTP/1.1 200"),
            "attempt {attempt}: {raw:?}"
        );
        assert!(raw.contains("process_start_time_seconds"), "{raw}");
    }
}

/// How long the endpoint waits for a request head (`metrics::http::HEAD_TIMEOUT`).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that never sends a request head is closed once the head timeout passes, so
/// idle clients cannot keep the endpoint's connection slots forever; a connection that
/// sends one in time is answered.
#[test]
fn idle_connections_are_closed_after_the_head_timeout() {
    let port = free_port();
    let _d = metrics_daemon("sync", &format!("127.0.0.1:{port}"));
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let started = Instant::now();
    idle.set_read_timeout(Some(HEAD_TIMEOUT * 3)).unwrap();
    let mut buf = [0u8; 256];
    // A read with a timeout that a signal or the freezer interrupts ends with EINTR (the
    // kernel does not restart it): read again.
    let n = loop {
        match idle.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    }
    .unwrap_or_else(|e| {
        panic!(
            "the idle connection was still open after {:?}: {e}",
            started.elapsed()
        )
    });
    let waited = started.elapsed();
    // The server may say 408 before it closes; either way it lets go.
    let said = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        n == 0 || said.starts_with("HTTP/1.1 408"),
        "the idle connection got {said:?}"
    );
    assert!(
        waited >= HEAD_TIMEOUT - Duration::from_millis(500),
        "closed after {waited:?}, before the head timeout"
    );
    assert!(scrape(port).contains("ringcrypt_build_info"));
}
