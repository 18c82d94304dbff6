//! What operators see: metrics that move with sessions, never on the public port; a
//! Grafana dashboard whose every expression names exported metrics; and a real
//! Prometheus scraping the admin listener.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::HeaderName;
use serde_json::Value;
use sessiongate::config::SessionMode;
use sessiongate::server;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::{cookie_client, metric_value, test_config, Fixture};

async fn scrape(fx: &Fixture) -> String {
    reqwest::get(fx.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn metrics_follow_a_session_from_creation_through_heartbeat_to_end() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let before = scrape(&fx).await;
    for sample in [
        "sessiongate_sessions_active{state=\"active\"}",
        "sessiongate_sessions_created_total{kind=\"new\"}",
        "sessiongate_heartbeats_total",
        "sessiongate_sessions_ended_total{reason=\"ended\"}",
    ] {
        assert_eq!(
            metric_value(&before, sample),
            Some(0.0),
            "{sample} starts at 0"
        );
    }

    let client = cookie_client();
    client.get(fx.url("/")).send().await.unwrap();
    assert_eq!(
        fx.metric("sessiongate_sessions_active{state=\"active\"}")
            .await,
        1.0
    );
    assert_eq!(
        fx.metric("sessiongate_sessions_created_total{kind=\"new\"}")
            .await,
        1.0
    );

    let agent = |endpoint: &str| {
        client
            .post(fx.url(&format!("/__sessiongate/{endpoint}")))
            .header("x-sessiongate-agent", "1")
            .body("{}")
            .send()
    };
    for _ in 0..3 {
        assert_eq!(agent("heartbeat").await.unwrap().status(), 200);
    }
    assert_eq!(fx.metric("sessiongate_heartbeats_total").await, 3.0);
    assert_eq!(agent("end").await.unwrap().status(), 200);

    let after = scrape(&fx).await;
    let value = |sample: &str| metric_value(&after, sample).unwrap_or(f64::NAN);
    assert_eq!(value("sessiongate_sessions_active{state=\"active\"}"), 0.0);
    assert_eq!(
        value("sessiongate_sessions_ended_total{reason=\"ended\"}"),
        1.0
    );
    assert_eq!(
        value("sessiongate_session_duration_seconds_count{reason=\"ended\"}"),
        1.0
    );
    assert_eq!(
        value("sessiongate_requests_total{code=\"2xx\",route=\"reserved\"}"),
        4.0
    );
    assert_eq!(
        value("sessiongate_requests_total{code=\"2xx\",route=\"proxy\"}"),
        1.0
    );
    assert_eq!(value("sessiongate_upstream_duration_seconds_count"), 1.0);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") > 0.0);
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("__sg"),
            "no ticket or path in a label: {line}"
        );
    }
}

#[tokio::test]
async fn metrics_are_not_on_the_public_port() {
    // The demo app answers 404 for what it does not know; the gateway forwards
    // /metrics like any path and never answers it itself.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(sessiongate::demo::serve(
        listener,
        HeaderName::from_static("x-session"),
        stop.clone(),
    ));
    let gateway = server::start(test_config(&app)).await.unwrap();
    let response = reqwest::get(format!("http://{}/metrics", gateway.public_addr))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(!response.text().await.unwrap().contains("sessiongate_"));
    gateway.shutdown();
    stop.cancel();
}

/// Every metric-like name (`sessiongate_*`, `process_*`) in a PromQL expression.
fn metric_names(expr: &str) -> Vec<&str> {
    metric_uses(expr)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// Each metric-like name in a PromQL expression with the text that follows it.
fn metric_uses(expr: &str) -> Vec<(&str, &str)> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut uses = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find(is_word) {
        let word = &rest[start..];
        let end = word.find(|c: char| !is_word(c)).unwrap_or(word.len());
        let (name, after) = word.split_at(end);
        if name.starts_with("sessiongate_") || name.starts_with("process_") {
            uses.push((name, after));
        }
        rest = after;
    }
    uses
}

/// What every panel query selects on, so that the Instance variable (one replica,
/// several, or All) applies to every panel.
const INSTANCE_FILTER: &str = "{instance=~\"$instance\"";

fn collect_panels<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    if let Some(panels) = value.get("panels").and_then(Value::as_array) {
        for panel in panels {
            out.push(panel);
            collect_panels(panel, out);
        }
    }
}

#[tokio::test]
async fn every_dashboard_expression_names_an_exported_metric() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let exported: BTreeSet<String> = scrape(&fx)
        .await
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_string))
        .collect();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/grafana/dashboards/sessiongate.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut panels = Vec::new();
    collect_panels(&dashboard, &mut panels);
    let mut checked = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            let uses = metric_uses(expr);
            assert!(!uses.is_empty(), "panel {title:?}: no metric in {expr:?}");
            for (name, after) in uses {
                assert!(
                    after.starts_with(INSTANCE_FILTER),
                    "panel {title:?}: {name} is not selected by {INSTANCE_FILTER}}}: {expr:?}"
                );
                assert!(
                    exported.contains(name),
                    "panel {title:?} uses {name}, which the gateway does not export"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} metric uses found");
    // Variables query exported metrics too.
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    for variable in variables {
        let query = variable["query"].to_string();
        for name in metric_names(&query) {
            assert!(exported.contains(name), "variable uses {name}");
        }
    }
    // The Instance variable lists the gateways, several at once, All by default.
    let instance = variables
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an instance variable");
    assert!(instance["query"]
        .as_str()
        .unwrap_or_default()
        .starts_with("label_values(sessiongate_"));
    assert!(instance["query"]
        .as_str()
        .unwrap_or_default()
        .ends_with(", instance)"));
    assert_eq!(instance["multi"], true);
    assert_eq!(instance["includeAll"], true);
    assert_eq!(instance["current"]["value"], serde_json::json!(["$__all"]));
    // A row breaks the key figures down by replica.
    let by_instance: BTreeSet<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]))
        .filter_map(|t| t["expr"].as_str())
        .filter(|expr| expr.starts_with("sum by (instance"))
        .flat_map(metric_names)
        .collect();
    for name in [
        "sessiongate_requests_total",
        "sessiongate_sessions_active",
        "sessiongate_store_errors_total",
    ] {
        assert!(
            by_instance.contains(name),
            "no panel shows {name} by instance"
        );
    }
}

/// A Prometheus server on loopback, killed on drop.
struct Prometheus {
    child: Child,
    _data: tempfile::TempDir,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(target: std::net::SocketAddr) -> Prometheus {
    let binary = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sessiongate\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            data.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {binary} ({e}); install Debian's `prometheus` (scripts/test does)")
        });
    Prometheus {
        child,
        _data: data,
        url: format!("http://127.0.0.1:{port}"),
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_admin_listener() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    for _ in 0..3 {
        cookie_client().get(fx.url("/")).send().await.unwrap();
    }
    let prometheus = start_prometheus(fx.gateway.admin_addr);
    let query = format!(
        "{}/api/v1/query?query=sessiongate_sessions_active%7Bstate%3D%22active%22%7D",
        prometheus.url
    );
    let mut last = String::new();
    for _ in 0..150 {
        if let Ok(response) = reqwest::get(&query).await {
            last = response.text().await.unwrap_or_default();
            let answer: Value = serde_json::from_str(&last).unwrap_or(Value::Null);
            if let Some(sample) = answer["data"]["result"].get(0) {
                assert_eq!(sample["metric"]["job"], "sessiongate");
                assert_eq!(sample["value"][1], "3", "{last}");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Prometheus never returned the sample within 15 s: {last}");
}

#[test]
fn the_sample_alerts_and_scrape_config_pass_promtool() {
    let docker = concat!(env!("CARGO_MANIFEST_DIR"), "/docker");
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "config", "prometheus.replicas.yml"],
        &["check", "rules", "alerts.yml"],
        &["test", "rules", "alerts_test.yml"],
    ] {
        let output = Command::new("promtool")
            .args(args)
            .current_dir(docker)
            .output()
            .expect("promtool runs (Debian's `prometheus` package; scripts/test installs it)");
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
