//! The fleet's scrape config (`contrib/prometheus/fleet.yml`): `promtool check config`, and
//! a real Prometheus applying its relabelling to daemon pods as Kubernetes discovery
//! describes them, scraping a real daemon.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::ALERTS;
use crate::contrib::promtool;
use crate::exposition::free_port;
use crate::support::*;

/// The discovery block as shipped: the daemon's pods in its namespace.
const DISCOVERY: &str = "    kubernetes_sd_configs:\n      - role: pod\n        namespaces:\n          names: [ringcrypt]\n";

/// The config with its Kubernetes discovery replaced by file discovery of `pods.json`
/// beside it: Debian's Prometheus is built without Kubernetes discovery, and a file can
/// carry the same `__meta_kubernetes_*` labels the relabelling reads.
fn file_discovery(text: &str) -> String {
    text.replace(
        DISCOVERY,
        "    file_sd_configs:\n      - files: [pods.json]\n",
    )
}

pub(crate) const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/prometheus/fleet.yml");

/// The fleet's scrape config passes `promtool check config` (with the alert rules beside it,
/// which it loads). Debian's promtool is built without Kubernetes service discovery and
/// refuses `kubernetes_sd_configs` as an unknown field; with that promtool the discovery
/// block alone is replaced by an equivalent file discovery and everything else (globals,
/// rule files, every relabelling rule and regex) is checked as shipped.
#[test]
fn fleet_scrape_config_passes_promtool_check() {
    let text = fs::read_to_string(FLEET).unwrap();
    assert!(
        text.contains(DISCOVERY),
        "the fleet config discovers the daemon's pods in its namespace"
    );
    assert!(
        text.contains("  - job_name: ringcrypt "),
        "the alerts' job name"
    );
    assert!(
        text.contains("target_label: instance"),
        "one instance per host"
    );
    let (ok, stdout, stderr) = promtool(&["check", "config", FLEET], b"");
    if ok {
        return;
    }
    assert!(
        stderr.contains("field kubernetes_sd_configs not found"),
        "promtool check config {FLEET}:\n{stdout}\n{stderr}"
    );
    let dir = tempfile::tempdir().unwrap();
    fs::copy(ALERTS, dir.path().join("alerts.yml")).unwrap();
    fs::write(dir.path().join("pods.json"), "[]").unwrap();
    let swapped = dir.path().join("fleet.yml");
    fs::write(&swapped, file_discovery(&text)).unwrap();
    let (ok, stdout, stderr) = promtool(&["check", "config", p(&swapped)], b"");
    assert!(
        ok,
        "promtool check config (discovery swapped):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("SUCCESS: 1 rule files found"), "{stdout}");
    // The check can fail: a broken relabelling regex is refused.
    fs::write(
        &swapped,
        fs::read_to_string(&swapped).unwrap().replace("(.+)", "(.+"),
    )
    .unwrap();
    let (ok, _, stderr) = promtool(&["check", "config", p(&swapped)], b"");
    assert!(!ok, "a bad regex passed: {stderr}");
}

/// `GET path` over HTTP/1.0; the body of a 200 answer, or None.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let _ = stream.shutdown(Shutdown::Write);
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then_some(())?;
    head.split(' ').nth(1).filter(|s| *s == "200")?;
    Some(body.to_string())
}

/// A pod as Kubernetes discovery of role `pod` describes it, for file discovery.
fn pod(address: &str, name: &str, scrape: &str, port: u16, node: &str) -> Value {
    json!({"targets": [address], "labels": {
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": name,
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": scrape,
        "__meta_kubernetes_pod_annotation_prometheus_io_port": port.to_string(),
        "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
        "__meta_kubernetes_pod_node_name": node,
        "__meta_kubernetes_pod_name": format!("{name}-{node}"),
    }})
}

/// Prometheus with the fleet's relabelling, given three pods: a daemon's with the scrape
/// annotations (its address without the metrics port, as a pod's is), a daemon's that
/// does not ask to be scraped, and another app's. What must hold: only the first is
/// scraped, at the annotated port and path, as job `ringcrypt` with the node as
/// `instance` and the pod's name as `pod`; its `up` is 1 and the daemon's
/// `ringcrypt_build_info` arrives under that instance.
#[test]
fn fleet_relabelling_scrapes_each_daemon_as_its_node() {
    let metrics = free_port();
    let _daemon = Daemon::builder("sync")
        .metrics(&format!("127.0.0.1:{metrics}"))
        .start();
    let dir = tempfile::tempdir().unwrap();
    fs::copy(ALERTS, dir.path().join("alerts.yml")).unwrap();
    let pods = json!([
        pod("127.0.0.1", "ringcryptd", "true", metrics, "node-a"),
        pod("127.0.0.1:1", "ringcryptd", "false", metrics, "node-b"),
        pod("127.0.0.1:2", "other-app", "true", metrics, "node-c"),
    ]);
    fs::write(dir.path().join("pods.json"), pods.to_string()).unwrap();
    let text = fs::read_to_string(FLEET).unwrap();
    let config = file_discovery(&text).replace("scrape_interval: 15s", "scrape_interval: 1s");
    fs::write(dir.path().join("fleet.yml"), config).unwrap();
    let web = free_port();
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            p(&dir.path().join("fleet.yml"))
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            p(&dir.path().join("data"))
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            fs::File::create(dir.path().join("prometheus.log")).unwrap(),
        ))
        .spawn()
        .expect("prometheus (Debian's prometheus package, which .ci/run installs) starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    let found = loop {
        let query = "/api/v1/query?query=ringcrypt_build_info%7Bjob%3D%22ringcrypt%22%7D";
        if let Some(body) = http_get(web, query) {
            let reply: Value = serde_json::from_str(&body).unwrap();
            if reply["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                break Some(reply);
            }
            last = Some(reply);
        }
        if Instant::now() > deadline || prometheus.try_wait().unwrap().is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let targets = http_get(web, "/api/v1/targets");
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let log = fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    let found = found.unwrap_or_else(|| panic!("no sample within 60 s: {last:?}\n{log}"));
    let series = &found["data"]["result"];
    assert_eq!(series.as_array().unwrap().len(), 1, "{found}");
    let labels = &series[0]["metric"];
    assert_eq!(labels["instance"], "node-a", "{found}");
    assert_eq!(labels["pod"], "ringcryptd-node-a", "{found}");
    assert_eq!(series[0]["value"][1], "1", "{found}");
    let targets: Value = serde_json::from_str(&targets.expect("the targets API answers")).unwrap();
    let active = targets["data"]["activeTargets"].as_array().unwrap();
    assert_eq!(
        active.len(),
        1,
        "only the daemon that asks is scraped: {targets}"
    );
    assert_eq!(
        active[0]["scrapeUrl"],
        format!("http://127.0.0.1:{metrics}/metrics")
    );
    assert_eq!(active[0]["health"], "up", "{targets}");
    assert_eq!(
        targets["data"]["droppedTargets"].as_array().unwrap().len(),
        2
    );
}
