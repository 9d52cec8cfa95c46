//! The Prometheus side of operations (README "Metrics, dashboard and alerts"): the alert rules in
//! `contrib/prometheus/alerts.yml`, the Grafana dashboard in `contrib/grafana/ringcrypt.json`,
//! and the `/metrics` endpoint of the real `ringcryptd` they are written against.
//!
//! - the rules pass `promtool check rules`, and `promtool test rules` shows each alert firing
//!   on the data it is meant for and not on healthy data;
//! - the dashboard is importable JSON (a `DS_PROMETHEUS` input, `datasource` and `instance`
//!   variables) and every panel query is valid PromQL (checked by promtool as recording rules);
//! - a daemon started with `--metrics 127.0.0.1:PORT`, after a known set of jobs, exposes
//!   exactly the counts, byte totals, error codes and histogram those jobs imply, in text
//!   that `promtool check metrics` accepts without a word; every metric name the dashboard
//!   and the rules use is in that scrape;
//! - `--metrics off` opens no TCP listener and the daemon still serves.
//!
//! promtool comes from Debian's `prometheus` package, which `.ci/run` installs; without it
//! these tests fail (they do not skip).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use tempfile::TempDir;

const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/prometheus/alerts.yml");
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/grafana/ringcrypt.json"
);

/// The families of the metric contract (README "Metrics, dashboard and alerts").
const FAMILIES: [(&str, &str); 11] = [
    ("ringcrypt_jobs_total", "counter"),
    ("ringcrypt_job_duration_seconds", "histogram"),
    ("ringcrypt_bytes_read_total", "counter"),
    ("ringcrypt_bytes_written_total", "counter"),
    ("ringcrypt_queue_depth", "gauge"),
    ("ringcrypt_queue_capacity", "gauge"),
    ("ringcrypt_jobs_inflight", "gauge"),
    ("ringcrypt_crypto_seconds_total", "counter"),
    ("ringcrypt_connections_active", "gauge"),
    ("ringcrypt_errors_total", "counter"),
    ("ringcrypt_build_info", "gauge"),
];

/// The contract's histogram buckets, as Prometheus prints `le`.
const BUCKETS: [f64; 15] = [
    1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0,
];

/// How long counters may lag the `done`/`error` reply of the job that moved them.
const SETTLE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// promtool

/// `promtool` with `args`, `stdin` piped in; returns (exit ok, stdout, stderr).
fn promtool(args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let spawned = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => panic!(
            "cannot run promtool ({e}): these tests need it. It comes from Debian's \
             `prometheus` package, which `.ci/run` installs; on this machine run \
             `apt-get update && apt-get install -y prometheus`"
        ),
    };
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    if wait_within(&mut child, Duration::from_secs(60)).is_none() {
        let _ = child.kill();
        panic!("promtool {args:?} did not finish within 60 s");
    }
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn alert_rules_pass_promtool_check() {
    let (ok, stdout, stderr) = promtool(&["check", "rules", ALERTS], b"");
    assert!(
        ok,
        "promtool check rules {ALERTS} failed:\n{stdout}\n{stderr}"
    );
    let rules = fs::read_to_string(ALERTS).unwrap();
    assert!(
        rules.contains("- name: ringcrypt"),
        "no group named ringcrypt"
    );
    for alert in [
        "RingcryptDown",
        "RingcryptJobErrorRatioHigh",
        "RingcryptQueueSaturated",
        "RingcryptAuthFailures",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "no alert {alert}"
        );
    }
}

/// Unit tests for the rules, run by `promtool test rules`: each alert fires on the input
/// it is meant for (after its `for`), and nothing fires on a healthy or idle daemon.
const RULE_TESTS: &str = r#"
rule_files: [ALERTS_PATH]
evaluation_interval: 1m
tests:
  # Healthy: up, 1% failures, queues a tenth full, a few auth failures: nothing fires.
  - interval: 1m
    input_series:
      - series: 'up{job="ringcrypt",instance="a:9477"}'
        values: '1x60'
      - series: 'ringcrypt_jobs_total{job="ringcrypt",instance="a:9477",op="encrypt",result="ok"}'
        values: '0+99x60'
      - series: 'ringcrypt_jobs_total{job="ringcrypt",instance="a:9477",op="decrypt",result="failed"}'
        values: '0+1x60'
      - series: 'ringcrypt_queue_depth{job="ringcrypt",instance="a:9477",shard="0"}'
        values: '100x60'
      - series: 'ringcrypt_queue_capacity{job="ringcrypt",instance="a:9477",shard="0"}'
        values: '1024x60'
      - series: 'ringcrypt_errors_total{job="ringcrypt",instance="a:9477",code="auth_failed"}'
        values: '0+1x60'
    promql_expr_test:
      - expr: ALERTS
        eval_time: 50m
        exp_samples: []

  # 10% of jobs fail, one shard's queue is 90% full, 3 auth failures a minute.
  - interval: 1m
    input_series:
      - series: 'up{job="ringcrypt",instance="a:9477"}'
        values: '1x60'
      - series: 'ringcrypt_jobs_total{job="ringcrypt",instance="a:9477",op="encrypt",result="ok"}'
        values: '0+90x60'
      - series: 'ringcrypt_jobs_total{job="ringcrypt",instance="a:9477",op="decrypt",result="failed"}'
        values: '0+10x60'
      - series: 'ringcrypt_queue_depth{job="ringcrypt",instance="a:9477",shard="0"}'
        values: '10x60'
      - series: 'ringcrypt_queue_depth{job="ringcrypt",instance="a:9477",shard="1"}'
        values: '922x60'
      - series: 'ringcrypt_queue_capacity{job="ringcrypt",instance="a:9477",shard="0"}'
        values: '1024x60'
      - series: 'ringcrypt_queue_capacity{job="ringcrypt",instance="a:9477",shard="1"}'
        values: '1024x60'
      - series: 'ringcrypt_errors_total{job="ringcrypt",instance="a:9477",code="auth_failed"}'
        values: '0+3x60'
    promql_expr_test:
      # Before any `for` has run out: pending only.
      - expr: ALERTS{alertstate="firing"}
        eval_time: 3m
        exp_samples: []
      - expr: ALERTS{alertstate="firing"}
        eval_time: 30m
        exp_samples:
          - labels: 'ALERTS{alertname="RingcryptJobErrorRatioHigh",alertstate="firing",job="ringcrypt",instance="a:9477",severity="warning"}'
            value: 1
          - labels: 'ALERTS{alertname="RingcryptQueueSaturated",alertstate="firing",job="ringcrypt",instance="a:9477",shard="1",severity="warning"}'
            value: 1
          - labels: 'ALERTS{alertname="RingcryptAuthFailures",alertstate="firing",job="ringcrypt",instance="a:9477",severity="warning"}'
            value: 1

  # One failure out of two jobs on an idle daemon is not an incident.
  - interval: 1m
    input_series:
      - series: 'up{job="ringcrypt",instance="a:9477"}'
        values: '1x60'
      - series: 'ringcrypt_jobs_total{job="ringcrypt",instance="a:9477",op="encrypt",result="ok"}'
        values: '0 1x60'
      - series: 'ringcrypt_jobs_total{job="ringcrypt",instance="a:9477",op="decrypt",result="failed"}'
        values: '0 1x60'
    promql_expr_test:
      - expr: ALERTS
        eval_time: 30m
        exp_samples: []

  # The daemon stops answering scrapes: RingcryptDown after 2 minutes.
  - interval: 1m
    input_series:
      - series: 'up{job="ringcrypt",instance="a:9477"}'
        values: '1 1 0x20'
    alert_rule_test:
      - alertname: RingcryptDown
        eval_time: 3m
        exp_alerts: []
      - alertname: RingcryptDown
        eval_time: 6m
        exp_alerts:
          - exp_labels:
              severity: critical
              job: ringcrypt
              instance: "a:9477"
            exp_annotations:
              summary: "ringcryptd a:9477 is down or not scraped"
              description: "Prometheus has not scraped ringcryptd a:9477 (job=\"ringcrypt\") successfully for 2 minutes, or no ringcrypt target exists at all. Clients cannot encrypt or decrypt through the daemon. Check `systemctl status ringcryptd`, the daemon's stderr, and that `--metrics` is not `off` on this host."

  # No ringcrypt target at all (scrape config lost): RingcryptDown too.
  - interval: 1m
    input_series:
      - series: 'up{job="other",instance="b:9100"}'
        values: '1x20'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 5m
        exp_samples:
          - labels: 'ALERTS{alertname="RingcryptDown",alertstate="firing",job="ringcrypt",severity="critical"}'
            value: 1
"#;

#[test]
fn alert_rules_fire_when_meant_to() {
    let dir = tempfile::tempdir().unwrap();
    let tests = dir.path().join("alerts_test.yml");
    fs::write(&tests, RULE_TESTS.replace("ALERTS_PATH", ALERTS)).unwrap();
    let (ok, stdout, stderr) = promtool(&["test", "rules", p(&tests)], b"");
    assert!(ok, "promtool test rules failed:\n{stdout}\n{stderr}");
}

// ---------------------------------------------------------------------------------------
// The dashboard

/// Every `expr` in the dashboard (panel targets), with the panel's title.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        let nested = panel["panels"].as_array().cloned().unwrap_or_default();
        for p in std::iter::once(panel).chain(nested.iter()) {
            for target in p["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a target of panel {title:?} has no expr"));
                exprs.push((title.clone(), expr.to_string()));
            }
        }
    }
    exprs
}

#[test]
fn dashboard_is_importable_and_its_queries_are_valid_promql() {
    let text = fs::read_to_string(DASHBOARD).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let schema = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dash["id"].is_null(), "an exported dashboard has id null");
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS datasource input: {inputs:?}"
    );
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("instance")["type"], "query");

    // Every panel and target reads the templated data source; no hard-coded uid.
    let mut ids = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "${datasource}");
        }
    }

    // The queries the brief asks for are there.
    let exprs = dashboard_exprs(&dash);
    let all: String = exprs
        .iter()
        .map(|(_, e)| e.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "rate(ringcrypt_bytes_read_total",
        "rate(ringcrypt_bytes_written_total",
        "rate(ringcrypt_jobs_total",
        "histogram_quantile(0.5, sum by (le, op) (rate(ringcrypt_job_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, op) (rate(ringcrypt_job_duration_seconds_bucket",
        "ringcrypt_queue_depth",
        "/ ringcrypt_queue_capacity",
        "ringcrypt_jobs_inflight",
        "rate(ringcrypt_errors_total",
        "ringcrypt_connections_active",
        "rate(ringcrypt_crypto_seconds_total",
        "ringcrypt_build_info",
    ] {
        assert!(
            all.contains(needle),
            "no dashboard query contains {needle:?}"
        );
    }

    // Valid PromQL: promtool checks each query as a recording rule, with Grafana's
    // variables replaced by what they expand to.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in exprs.iter().enumerate() {
        assert!(!expr.trim().is_empty(), "empty query in panel {title:?}");
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard_rules.yml");
    fs::write(&file, &rules).unwrap();
    let (ok, stdout, stderr) = promtool(&["check", "rules", p(&file)], b"");
    assert!(
        ok,
        "a dashboard query is not valid PromQL:\n{stdout}\n{stderr}\n{rules}"
    );
}

/// The `ringcrypt_*` names in `text`, histogram suffixes stripped.
fn names_used(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("ringcrypt_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start + "ringcrypt_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        if before_ok {
            let name = &text[start..end];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(name.to_string());
        }
        i = end;
    }
    names
}

// ---------------------------------------------------------------------------------------
// A daemon with its metrics endpoint

/// `ringcryptd` on its own temp directory like `support::Daemon`, with `--metrics` set.
struct MetricsDaemon {
    child: Option<Child>,
    dir: TempDir,
    root: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    /// The backend `pong` reports.
    backend: String,
}

/// A TCP port nothing listens on right now (bound to 127.0.0.1:0, then released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl MetricsDaemon {
    fn start(backend: &str, metrics: &str) -> MetricsDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let keys = dir.path().join("keys.toml");
        let ring = format!("default = \"k2\"\n{}{}", keygen("k1"), keygen("k2"));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&keys)
            .and_then(|mut f| f.write_all(ring.as_bytes()))
            .expect("write key ring");
        let socket = dir.path().join("d.sock");
        let log = dir.path().join("d.log");
        let child = Command::new(DAEMON)
            .arg("--socket")
            .arg(&socket)
            .arg("--keys")
            .arg(&keys)
            .arg("--allow-root")
            .arg(&root)
            .args(["--shards", "2", "--fsync", "never", "--metrics", metrics])
            .env("RINGCRYPT_BACKEND", backend)
            .env_remove("RINGCRYPT_SOCKET")
            .env_remove("RINGCRYPT_KEYS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(File::create(&log).unwrap()))
            .spawn()
            .expect("ringcryptd starts");
        let mut d = MetricsDaemon {
            child: Some(child),
            dir,
            root,
            socket,
            log,
            backend: String::new(),
        };
        d.backend = d.wait_ready();
        d
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for a `pong` and returns its backend.
    fn wait_ready(&mut self) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "ringcryptd exited before answering ping ({status}); log:\n{}",
                    self.log_text()
                );
            }
            if let Ok(stream) = UnixStream::connect(&self.socket) {
                let mut client = Client::from_stream(stream, Duration::from_secs(5));
                let reply = client.call(&json!({"op": "ping"}));
                assert_eq!(reply["type"], "pong", "{reply}");
                return reply["backend"].as_str().unwrap_or("").to_string();
            }
            assert!(
                Instant::now() < deadline,
                "ringcryptd did not answer ping within {START_TIMEOUT:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MetricsDaemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = wait_within(&mut child, STOP_TIMEOUT);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let status = status.expect("ringcryptd exits within the stop timeout of SIGTERM");
            assert!(
                status.success(),
                "ringcryptd exited with {status} after SIGTERM; log:\n{}",
                self.log_text()
            );
        }
    }
}

/// `GET /metrics` over HTTP/1.0 on a plain TcpStream; returns the body (status must be 200).
fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the metrics port {port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n")
        .unwrap();
    let _ = stream.shutdown(Shutdown::Write);
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut body_len: Option<(usize, usize)> = None; // (header end, content length)
    loop {
        if let Some((start, len)) = body_len
            && raw.len() >= start + len
        {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "reading the metrics response: {e} (so far {} bytes)",
                raw.len()
            ),
        }
        if body_len.is_none()
            && let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            if let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
            {
                body_len = Some((end + 4, len));
            }
        }
    }
    let text = String::from_utf8(raw).expect("the metrics response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in the metrics response: {text:?}"));
    let status = head.lines().next().unwrap_or("");
    assert!(
        status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200"),
        "GET /metrics: {status:?}\n{text}"
    );
    body.to_string()
}

/// One sample of the text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples, and per family its `# TYPE` and whether it has `# HELP`.
#[derive(Debug, Default)]
struct Scrape {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
    help: BTreeSet<String>,
    text: String,
}

fn parse_value(v: &str) -> f64 {
    match v {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|e| panic!("bad sample value {v:?}: {e}")),
    }
}

fn parse_scrape(text: &str) -> Scrape {
    let mut s = Scrape {
        text: text.to_string(),
        ..Scrape::default()
    };
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            s.help.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            s.types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or_else(|| panic!("sample line without a value: {line:?}"));
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            // label="value" pairs, values with \\, \" and \n escapes.
            let chars: Vec<char> = inner.chars().collect();
            let mut i = 0;
            loop {
                while i < chars.len() && (chars[i] == ',' || chars[i] == ' ') {
                    i += 1;
                }
                assert!(i < chars.len(), "unterminated labels: {line:?}");
                if chars[i] == '}' {
                    i += 1;
                    break;
                }
                let key_start = i;
                while chars[i] != '=' {
                    i += 1;
                }
                let key: String = chars[key_start..i].iter().collect();
                assert_eq!(chars[i + 1], '"', "label value not quoted: {line:?}");
                i += 2;
                let mut value = String::new();
                while chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                        value.push(if chars[i] == 'n' { '\n' } else { chars[i] });
                    } else {
                        value.push(chars[i]);
                    }
                    i += 1;
                }
                i += 1;
                labels.insert(key.trim().to_string(), value);
            }
            let consumed: usize = chars[..i].iter().map(|c| c.len_utf8()).sum();
            rest = &inner[consumed..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
        s.samples.push(Sample {
            name,
            labels,
            value: parse_value(value),
        });
    }
    s
}

impl Scrape {
    /// Samples of `name` whose labels include all of `want`.
    fn matching(&self, name: &str, want: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && want
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// Sum of the matching samples (0 when there are none).
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.matching(name, want).iter().map(|s| s.value).sum()
    }

    /// The one matching sample's value; panics if there is not exactly one.
    fn one(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        let found = self.matching(name, want);
        assert!(
            found.len() == 1,
            "want exactly one {name}{want:?}, found {found:?}; scrape:\n{}",
            self.text
        );
        found[0].value
    }

    /// The family a sample name belongs to.
    fn family_of<'a>(&self, name: &'a str) -> &'a str {
        if self.types.contains_key(name) {
            return name;
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && self.types.contains_key(base)
            {
                return base;
            }
        }
        name
    }
}

/// The port numbers of listening TCP sockets the process `pid` holds (from /proc).
fn listening_ports(pid: u32) -> Vec<u16> {
    let mut inodes = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        if let Ok(target) = fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                let port = cols[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort();
    ports
}

/// What the known workload must leave in the counters.
struct Expected {
    encrypt_ok: f64,
    decrypt_ok: f64,
    decrypt_failed: f64,
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
            && s.sum("ringcrypt_errors_total", &[("code", "auth_failed")]) == 1.0
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
fn run_workload(d: &MetricsDaemon, client: &mut Client) -> Expected {
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

    client.send_raw(b"this is not json\n");
    assert_eq!(code(&client.recv()), "bad_request");

    Expected {
        encrypt_ok: sizes.len() as f64,
        decrypt_ok: decrypted.len() as f64,
        decrypt_failed: 1.0,
        bytes_read: read as f64,
        bytes_written: written as f64,
    }
}

/// The metrics of a known workload, checked against what it did.
fn scrape_counts_the_workload(backend: &'static str) {
    let port = free_port();
    let d = MetricsDaemon::start(backend, &format!("127.0.0.1:{port}"));
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
        want.encrypt_ok + want.decrypt_ok + want.decrypt_failed,
        "no other job ended (no rewrap, nothing cancelled)\n{body}"
    );
    for sample in s.matching("ringcrypt_jobs_total", &[]) {
        let op = sample.labels.get("op").map(String::as_str);
        let result = sample.labels.get("result").map(String::as_str);
        assert!(
            matches!(op, Some("encrypt" | "decrypt" | "rewrap"))
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
        1.0
    );
    assert_eq!(
        s.sum("ringcrypt_errors_total", &[("code", "bad_request")]),
        1.0
    );
    assert_eq!(s.sum("ringcrypt_errors_total", &[]), 2.0, "{body}");

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
    let pong_backend = if d.backend == "io_uring" {
        "uring"
    } else {
        d.backend.as_str()
    };
    assert_eq!(
        info[0].labels.get("backend").map(String::as_str),
        Some(pong_backend),
        "build_info backend vs pong's {:?}",
        d.backend
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
fn dashboard_and_alerts_use_only_exported_metrics(backend: &'static str) {
    let port = free_port();
    let d = MetricsDaemon::start(backend, &format!("127.0.0.1:{port}"));
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
fn metrics_off_listens_nowhere(backend: &'static str) {
    let d = MetricsDaemon::start(backend, "off");
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
    let on = MetricsDaemon::start("sync", &format!("127.0.0.1:{port}"));
    drop(on);
    // The same port, now with metrics off: nothing answers there.
    let d = MetricsDaemon::start("sync", "off");
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

#[test]
fn metric_names_are_extracted_like_promql_reads_them() {
    let names = names_used(
        "sum(rate(ringcrypt_job_duration_seconds_bucket[5m])) / ringcrypt_jobs_total x_ringcrypt_no",
    );
    let want: BTreeSet<String> = ["ringcrypt_job_duration_seconds", "ringcrypt_jobs_total"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, want);
    let s = parse_scrape(
        "# HELP a_total x\n# TYPE a_total counter\na_total{code=\"a\\\"b\",k=\"v\"} 3\nb 1.5e3 123\n",
    );
    assert_eq!(s.one("a_total", &[("code", "a\"b")]), 3.0);
    assert_eq!(s.one("b", &[]), 1500.0);
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[test] fn $name() { super::$name("uring") })*
        }
        mod sync {
            $(#[test] fn $name() { super::$name("sync") })*
        }
    };
}

both_backends!(
    scrape_counts_the_workload,
    dashboard_and_alerts_use_only_exported_metrics,
    metrics_off_listens_nowhere,
);
