//! Shared test fixtures: a recording upstream, an in-process gateway on ephemeral
//! loopback ports, and raw-socket helpers for adversarial input.
#![allow(dead_code)]

pub mod faulty;
pub mod process;
pub mod redis;
pub mod scripted;
pub mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use sessiongate::config::{Config, Duration as CfgDuration, SessionMode};
use sessiongate::server::{self, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use upstream::Upstream;

/// Polls `done` every 10 ms for up to 5 s; whether it came true. For counters a
/// test upstream keeps (connections closed, ...), where no event says "now".
pub async fn eventually(done: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// A config for tests: loopback, ephemeral ports, short timeouts.
pub fn test_config(upstream_url: &str) -> Config {
    let mut config = Config::default();
    config.listen.address = "127.0.0.1:0".parse().unwrap();
    config.admin.address = "127.0.0.1:0".parse().unwrap();
    config.listen.header_timeout = CfgDuration::from_secs(2);
    config.listen.drain_timeout = CfgDuration::from_secs(5);
    config.upstream.url = upstream_url.to_string();
    config.upstream.connect_timeout = CfgDuration::from_secs(2);
    config.upstream.response_timeout = CfgDuration::from_secs(5);
    config
}

/// A running gateway in front of a recording upstream.
pub struct Fixture {
    pub upstream: Upstream,
    pub gateway: Running,
}

impl Fixture {
    /// Starts an upstream and a gateway in `mode`, after `tweak` adjusts the config.
    pub async fn start(mode: SessionMode, tweak: impl FnOnce(&mut Config)) -> Fixture {
        let upstream = Upstream::start().await;
        let mut config = test_config(&upstream.url());
        config.session.mode = mode;
        tweak(&mut config);
        let gateway = server::start(config).await.expect("gateway starts");
        Fixture { upstream, gateway }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.public_addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.admin_addr, path)
    }

    /// The value of one sample of the gateway's metrics, e.g.
    /// `sessiongate_sessions_ended_total{reason="timeout"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = metrics_of(self.gateway.admin_addr).await;
        metric_value(&text, sample).unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
    }
}

/// The Prometheus text of the gateway whose admin listener is at `admin`.
pub async fn metrics_of(admin: SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics reachable")
        .text()
        .await
        .expect("metrics body")
}

/// A gateway in front of any upstream URL (a [`scripted::Scripted`] one, say).
pub async fn gateway_for(
    upstream_url: &str,
    mode: SessionMode,
    tweak: impl FnOnce(&mut Config),
) -> Running {
    let mut config = test_config(upstream_url);
    config.session.mode = mode;
    tweak(&mut config);
    server::start(config).await.expect("gateway starts")
}

/// Reads from `stream` until the peer closes it (or 5 s pass: `None`).
pub async fn read_to_close(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut answer = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(answer),
        Err(_) => None,
    }
}

/// Finds `sample` (name with labels, exactly as rendered) in a Prometheus text page.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
}

/// Mints a session with a polite client and returns its `Cookie` header value.
pub async fn session_cookies(fx: &Fixture) -> String {
    cookies_of(&reqwest::get(fx.url("/")).await.unwrap())
}

/// The cookie pairs a response sets, as one `Cookie` header value.
pub fn cookies_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A client that follows no redirects and gives up after 10 s.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client with a cookie jar, like a browser without JavaScript.
pub fn cookie_client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Sends `raw` bytes on a fresh connection and reads the whole answer (the request
/// should say `Connection: close`). Gives up after 5 s.
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of a raw HTTP/1.1 answer.
pub fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// The value of a header in a raw HTTP/1.1 answer (case-insensitive name).
pub fn header_of<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
