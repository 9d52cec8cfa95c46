//! The Prometheus side of operations (README "Metrics, dashboard and alerts"): the alert rules in
//! `contrib/prometheus/alerts.yml`, the Grafana dashboard in `contrib/grafana/ringcrypt.json`,
//! and the `/metrics` endpoint of the real `ringcryptd` they are written against.
//!
//! - the rules pass `promtool check rules`, and `promtool test rules` on the shipped
//!   `contrib/prometheus/alerts_test.yml` shows each alert firing on the data it is meant for,
//!   for the host it is about, and not on healthy data;
//! - the dashboard is importable JSON (a `DS_PROMETHEUS` input, `datasource` and `instance`
//!   variables) and every panel query is valid PromQL (checked by promtool as recording rules);
//!   evaluated by promtool over two hosts, every query keeps the hosts apart, and every
//!   per-shard query keeps each host's shards apart;
//! - a daemon started with `--metrics 127.0.0.1:PORT`, after a known set of jobs, exposes
//!   exactly the counts, byte totals, error codes and histogram those jobs imply, in text
//!   that `promtool check metrics` accepts without a word; every metric name the dashboard
//!   and the rules use is in that scrape;
//! - `--metrics off` opens no TCP listener and the daemon still serves;
//! - the endpoint is a real HTTP server: 50 idle connections do not stall a scrape (under a
//!   second), `HEAD` and query strings are answered, other paths and methods are refused
//!   with their status, and the first scrape has every family, `process_*` included;
//! - the fleet's scrape config (`contrib/prometheus/fleet.yml`, Kubernetes discovery of the
//!   daemon's pods) passes `promtool check config`, and a real Prometheus given daemon pods
//!   as that discovery describes them scrapes only the daemon that asks, at its annotated
//!   port, with its node as `instance` (`fleet.rs`).
//!
//! promtool comes from Debian's `prometheus` package, which `.ci/run` installs; without it
//! these tests fail (they do not skip).
//!
//! `contrib.rs` checks the alert rules and the dashboard with promtool, `exposition.rs`
//! reads the text a scrape returns, `live.rs` runs the daemon and checks its counters, and
//! `http.rs` checks the endpoint as an HTTP server.

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod contrib;
mod exposition;
mod fleet;
mod http;
mod live;

use std::time::Duration;

use http::{
    connections_past_the_bound_are_closed, first_scrape_has_every_family,
    head_query_strings_and_wrong_requests, idle_connections_do_not_stall_a_scrape,
};
use live::{
    dashboard_and_alerts_use_only_exported_metrics, directory_fsyncs_are_batched,
    metrics_off_listens_nowhere, scrape_counts_the_workload,
};

const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/prometheus/alerts.yml");
const ALERT_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/prometheus/alerts_test.yml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/grafana/ringcrypt.json"
);

/// The families of the metric contract (README "Metrics, dashboard and alerts").
const FAMILIES: [(&str, &str); 13] = [
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
    ("ringcrypt_verify_failures_total", "counter"),
    ("ringcrypt_build_info", "gauge"),
    ("ringcrypt_dir_fsyncs_total", "counter"),
];

/// The contract's histogram buckets, as Prometheus prints `le`.
const BUCKETS: [f64; 15] = [
    1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0,
];

/// How long counters may lag the `done`/`error` reply of the job that moved them.
const SETTLE: Duration = Duration::from_secs(10);

both_backends!(
    scrape_counts_the_workload,
    dashboard_and_alerts_use_only_exported_metrics,
    metrics_off_listens_nowhere,
    idle_connections_do_not_stall_a_scrape,
    connections_past_the_bound_are_closed,
    head_query_strings_and_wrong_requests,
    first_scrape_has_every_family,
    directory_fsyncs_are_batched,
);
