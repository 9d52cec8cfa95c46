//! The alert rules and the dashboard, checked with promtool, and the metric names they use.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::exposition::parse_scrape;
use crate::support::*;
use crate::{ALERT_TESTS, ALERTS, DASHBOARD};

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
        "RingcryptVerifyFailures",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "no alert {alert}"
        );
    }
}

/// The shipped unit tests of the rules (`contrib/prometheus/alerts_test.yml`), run as an
/// operator runs them: each alert fires on the data it is meant for, names the host (and
/// shard) it is about, and nothing fires on a healthy or idle daemon. The file must test
/// every alert the rules define.
#[test]
fn alert_rules_fire_when_meant_to() {
    let tests = fs::read_to_string(ALERT_TESTS).unwrap();
    assert!(
        tests.contains("rule_files: [alerts.yml]"),
        "{ALERT_TESTS} must test the rules beside it"
    );
    let rules = fs::read_to_string(ALERTS).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}"))
                || tests.contains(&format!("alertname=\"{alert}\"")),
            "{ALERT_TESTS} has no test for {alert}"
        );
    }
    let (ok, stdout, stderr) = promtool(&["test", "rules", ALERT_TESTS], b"");
    assert!(
        ok && stdout.contains("SUCCESS"),
        "promtool test rules {ALERT_TESTS} failed:\n{stdout}\n{stderr}"
    );
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
        "histogram_quantile(0.5, sum by (instance, le, op) (rate(ringcrypt_job_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (instance, le, op) (rate(ringcrypt_job_duration_seconds_bucket",
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

/// Two hosts with two shards each, every series the dashboard reads moving: the input of
/// [`dashboard_keeps_hosts_and_shards_apart`].
const TWO_HOSTS: &str = r#"
      - series: 'up{job="ringcrypt",instance="HOST"}'
        values: '1x30'
      - series: 'ringcrypt_build_info{job="ringcrypt",instance="HOST",version="0.1.0",backend="uring"}'
        values: '1x30'
      - series: 'ringcrypt_connections_active{job="ringcrypt",instance="HOST"}'
        values: '2x30'
      - series: 'ringcrypt_jobs_total{job="ringcrypt",instance="HOST",op="encrypt",result="ok"}'
        values: '0+60x30'
      - series: 'ringcrypt_jobs_total{job="ringcrypt",instance="HOST",op="decrypt",result="failed"}'
        values: '0+6x30'
      - series: 'ringcrypt_job_duration_seconds_bucket{job="ringcrypt",instance="HOST",op="encrypt",le="0.01"}'
        values: '0+30x30'
      - series: 'ringcrypt_job_duration_seconds_bucket{job="ringcrypt",instance="HOST",op="encrypt",le="0.1"}'
        values: '0+60x30'
      - series: 'ringcrypt_job_duration_seconds_bucket{job="ringcrypt",instance="HOST",op="encrypt",le="+Inf"}'
        values: '0+60x30'
      - series: 'ringcrypt_errors_total{job="ringcrypt",instance="HOST",code="auth_failed"}'
        values: '0+6x30'
      - series: 'ringcrypt_verify_failures_total{job="ringcrypt",instance="HOST",code="auth_failed"}'
        values: '0+1x30'
"#;

/// The per-shard series of [`TWO_HOSTS`], once per host and shard.
const TWO_HOSTS_SHARDS: &str = r#"
      - series: 'ringcrypt_bytes_read_total{job="ringcrypt",instance="HOST",shard="SHARD"}'
        values: '0+6000x30'
      - series: 'ringcrypt_bytes_written_total{job="ringcrypt",instance="HOST",shard="SHARD"}'
        values: '0+6100x30'
      - series: 'ringcrypt_queue_depth{job="ringcrypt",instance="HOST",shard="SHARD"}'
        values: '10x30'
      - series: 'ringcrypt_queue_capacity{job="ringcrypt",instance="HOST",shard="SHARD"}'
        values: '1024x30'
      - series: 'ringcrypt_jobs_inflight{job="ringcrypt",instance="HOST",shard="SHARD"}'
        values: '1x30'
      - series: 'ringcrypt_crypto_seconds_total{job="ringcrypt",instance="HOST",shard="SHARD"}'
        values: '0+30x30'
      - series: 'ringcrypt_dir_fsyncs_total{job="ringcrypt",instance="HOST",shard="SHARD"}'
        values: '0+20x30'
      - series: 'ringcrypt_direct_io_fallbacks_total{job="ringcrypt",instance="HOST",shard="SHARD"}'
        values: '0+1x30'
"#;

/// With the instance variable at All, two hosts with two shards each: promtool evaluates
/// every dashboard query and each must give one line per host (`group by (instance)` has
/// both hosts, so no query merges them), and each query whose legend names the shard one
/// line per host and shard (shard 0 of one host is never merged with shard 0 of another).
/// Every legend of a query that keeps hosts apart names the host.
#[test]
fn dashboard_keeps_hosts_and_shards_apart() {
    let dash: Value = serde_json::from_str(&fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let hosts = ["a:9477", "b:9477"];
    let mut input = String::new();
    for host in hosts {
        input.push_str(&TWO_HOSTS.replace("HOST", host));
        for shard in ["0", "1"] {
            input.push_str(
                &TWO_HOSTS_SHARDS
                    .replace("HOST", host)
                    .replace("SHARD", shard),
            );
        }
    }
    let mut checks = String::new();
    let mut per_shard = 0;
    let panels = dash["panels"].as_array().unwrap();
    for target in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
    {
        let expr = target["expr"].as_str().unwrap();
        let legend = target["legendFormat"].as_str().unwrap_or("");
        assert!(
            legend.is_empty() || legend.contains("{{instance}}"),
            "the legend {legend:?} of {expr} does not name the host"
        );
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        let mut groupings = vec![("instance", vec![])];
        if legend.contains("{{shard}}") {
            groupings.push(("instance, shard", vec!["0", "1"]));
            per_shard += 1;
        }
        for (by, shards) in groupings {
            checks.push_str(&format!(
                "      - expr: {}\n        eval_time: 20m\n        exp_samples:\n",
                serde_json::to_string(&format!("group by ({by}) ({expr})")).unwrap()
            ));
            for host in hosts {
                let labels: Vec<String> = if shards.is_empty() {
                    vec![format!("{{instance=\"{host}\"}}")]
                } else {
                    shards
                        .iter()
                        .map(|s| format!("{{instance=\"{host}\", shard=\"{s}\"}}"))
                        .collect()
                };
                for labels in labels {
                    checks.push_str(&format!(
                        "          - labels: {}\n            value: 1\n",
                        serde_json::to_string(&labels).unwrap()
                    ));
                }
            }
        }
    }
    assert!(per_shard >= 5, "only {per_shard} per-shard queries found");
    let tests = format!(
        "evaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:{input}    promql_expr_test:\n{checks}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard_test.yml");
    fs::write(&file, &tests).unwrap();
    let (ok, stdout, stderr) = promtool(&["test", "rules", p(&file)], b"");
    assert!(
        ok,
        "a dashboard query merges hosts or shards:\n{stdout}\n{stderr}\n{tests}"
    );
}
