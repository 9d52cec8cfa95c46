//! The alert rules and the dashboard, checked with promtool, and the metric names they use.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::exposition::parse_scrape;
use crate::support::*;
use crate::{ALERTS, DASHBOARD};

/// `promtool` with `args`, `stdin` piped in; returns (exit ok, stdout, stderr).
pub(crate) fn promtool(args: &[&str], stdin: &[u8]) -> (bool, String, String) {
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
pub(crate) fn names_used(text: &str) -> BTreeSet<String> {
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
