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
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("sessiongate_") || word.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

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
            let names = metric_names(expr);
            assert!(!names.is_empty(), "panel {title:?}: no metric in {expr:?}");
            for name in names {
                assert!(
                    exported.contains(&name),
                    "panel {title:?} uses {name}, which the gateway does not export"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} metric uses found");
    // Variables query exported metrics too.
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let query = variable["query"].to_string();
        for name in metric_names(&query) {
            assert!(exported.contains(&name), "variable uses {name}");
        }
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
