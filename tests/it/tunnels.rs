//! Upgraded tunnels against the real gateway over sockets: they hold their connection
//! permit (`listen.max_connections`) until they close, close after
//! `listen.idle_timeout` without a byte, are counted in `sessiongate_tunnels_open`,
//! close at shutdown after `drain_timeout`, and keep their session alive while open.

use std::time::{Duration, Instant};

use sessiongate::config::{Config, Duration as Cfg, SessionMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{session_cookies, status_of, Fixture};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Opens a WebSocket through the gateway and reads the `101` head.
async fn open(fx: &Fixture, cookies: Option<&str>) -> TcpStream {
    let mut stream = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
    let cookie = cookies
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "GET /upgrade HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{cookie}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("a 101 in time")
            .unwrap();
        assert_eq!(n, 1, "closed before the head ended: {answer:?}");
        answer.push(byte[0]);
    }
    let answer = String::from_utf8(answer).unwrap();
    assert_eq!(status_of(&answer), 101, "{answer}");
    stream
}

/// Sends `bytes` through the tunnel and reads the echo.
async fn echo(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("tunnel open");
    assert_eq!(back, bytes);
}

/// Whether the peer closed `stream` within `within` (bytes read meanwhile ignored).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut sink = Vec::new();
    matches!(
        tokio::time::timeout(within, stream.read_to_end(&mut sink)).await,
        Ok(Ok(_)) | Ok(Err(_))
    )
}

async fn wait_metric(fx: &Fixture, sample: &str, value: f64) {
    for _ in 0..100 {
        if fx.metric(sample).await == value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{sample} never became {value}: {}", fx.metric(sample).await);
}

#[tokio::test]
async fn tunnels_hold_their_connection_permit_until_they_close() {
    let fx = Fixture::start(SessionMode::Tab, |c: &mut Config| {
        c.listen.max_connections = 5;
    })
    .await;
    let mut tunnels = Vec::new();
    for i in 0..5u8 {
        let mut stream = open(&fx, None).await;
        echo(&mut stream, &[b'a' + i; 4]).await;
        tunnels.push(stream);
    }
    wait_metric(&fx, "sessiongate_tunnels_open", 5.0).await;

    // A sixth connection is accepted by the kernel but not served.
    let mut sixth = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
    sixth
        .write_all(b"GET /plain HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let early =
        tokio::time::timeout(Duration::from_millis(700), sixth.read_to_end(&mut answer)).await;
    assert!(
        early.is_err() && answer.is_empty(),
        "served past max_connections while 5 tunnels were open: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // One tunnel closes: its permit goes to the waiting connection.
    drop(tunnels.pop());
    tokio::time::timeout(Duration::from_secs(5), sixth.read_to_end(&mut answer))
        .await
        .expect("served once a tunnel closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 200, "{answer}");
    wait_metric(&fx, "sessiongate_tunnels_open", 4.0).await;
    drop(tunnels);
    wait_metric(&fx, "sessiongate_tunnels_open", 0.0).await;
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_idle_timeout() {
    let fx = Fixture::start(SessionMode::Tab, |c: &mut Config| {
        c.listen.idle_timeout = Cfg::from_millis(800);
    })
    .await;
    let mut busy = open(&fx, None).await;
    let mut idle = open(&fx, None).await;
    wait_metric(&fx, "sessiongate_tunnels_open", 2.0).await;

    // Bytes every 300 ms keep a tunnel open well past the idle timeout.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2000) {
        echo(&mut busy, b"ping").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        closed_within(&mut idle, Duration::from_millis(10)).await,
        "the idle tunnel is still open after 2 s with idle_timeout = 800ms"
    );
    echo(&mut busy, b"still open").await;
    wait_metric(&fx, "sessiongate_tunnels_open", 1.0).await;

    // Left alone, it closes too.
    assert!(closed_within(&mut busy, Duration::from_secs(3)).await);
    wait_metric(&fx, "sessiongate_tunnels_open", 0.0).await;
}

#[tokio::test]
async fn tunnels_close_at_shutdown_after_the_drain_timeout() {
    let fx = Fixture::start(SessionMode::Tab, |c: &mut Config| {
        c.listen.drain_timeout = Cfg::from_millis(1000);
    })
    .await;
    let mut stream = open(&fx, None).await;
    let Fixture { upstream, gateway } = fx;
    let shut = Instant::now();
    gateway.shutdown();
    let waited = tokio::spawn(gateway.wait());
    // Within the drain time the tunnel still works …
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo(&mut stream, b"draining").await;
    // … after it, the gateway closes it and finishes.
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await);
    assert!(
        shut.elapsed() >= Duration::from_millis(900),
        "closed before drain_timeout: {:?}",
        shut.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(5), waited)
        .await
        .expect("the gateway stopped")
        .unwrap();
    drop(upstream);
}

/// DESIGN §4: an open WebSocket is a signal. A page-less client whose only sign of
/// life is its socket keeps its session past `abandon`; once the socket closes, the
/// session is abandoned `abandon` later.
#[tokio::test]
async fn an_open_websocket_keeps_its_session_until_it_closes() {
    let fx = Fixture::start(SessionMode::Browser, |c: &mut Config| {
        c.session.timeout = Cfg::from_secs(30);
        // Heartbeat interval: a third of this, i.e. 1 s.
        c.session.abandon = Some(Cfg::from_secs(3));
    })
    .await;
    let cookies = session_cookies(&fx).await;
    let mut stream = open(&fx, Some(&cookies)).await;

    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        fx.metric("sessiongate_sessions_ended_total{reason=\"abandoned\"}")
            .await,
        0.0,
        "abandoned while its WebSocket was open"
    );
    echo(&mut stream, b"alive").await;

    drop(stream);
    let closed = Instant::now();
    loop {
        if fx
            .metric("sessiongate_sessions_ended_total{reason=\"abandoned\"}")
            .await
            == 1.0
        {
            break;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(8),
            "not abandoned after its socket closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The abandon clock ran from the close (minus the sweeper's and this loop's slack).
    assert!(
        closed.elapsed() >= Duration::from_millis(2500),
        "abandoned {:?} after the close",
        closed.elapsed()
    );
}
