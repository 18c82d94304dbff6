//! Request bodies under deadlines: a body that stops arriving is cut off after
//! `listen.body_timeout` (reserved or forwarded) and frees its connection slot; a
//! slow but steady upload is not an upstream timeout; a client that breaks off its
//! body is the client's error, not the upstream's.

use std::time::{Duration, Instant};

use sessiongate::config::{Duration as CfgDuration, SessionMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{header_of, status_of, Fixture};

/// A well-formed (made-up) browser key: 32 bytes, base64url.
const MADE_UP_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Waits until the metric `sample` reads `value` (or 3 s pass) and returns its value.
async fn metric_reaches(fx: &Fixture, sample: &str, value: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = fx.metric(sample).await;
        if now == value || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stalled_bodies_are_cut_off_and_free_their_connections() {
    let fx = Fixture::start(SessionMode::Tab, |c| {
        c.listen.max_connections = 5;
        c.listen.body_timeout = CfgDuration::from_millis(500);
    })
    .await;
    let reserved = format!(
        "POST /__sessiongate/session HTTP/1.1\r\nHost: gw\r\nCookie: sg_browser={MADE_UP_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    let forwarded = "POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\n\
                     Content-Length: 100\r\n\r\n"
        .to_string();
    let opened = Instant::now();
    let mut stalled = Vec::new();
    for head in [&reserved, &reserved, &reserved, &forwarded, &forwarded] {
        let mut stream = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stalled.push(stream);
    }
    // Every slot is taken; an ordinary request is served as soon as one frees up.
    let ordinary = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
        .get(fx.url("/ordinary"))
        .send();
    let ordinary = tokio::spawn(ordinary);

    for (i, mut stream) in stalled.into_iter().enumerate() {
        let mut answer = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
        assert!(
            closed.is_ok(),
            "stalled connection {i} still open after 3 s"
        );
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status_of(&answer), 408, "{i}: {answer}");
        assert!(header_of(&answer, "x-session-state").is_some(), "{answer}");
    }
    let cut_off = opened.elapsed();
    assert!(cut_off >= Duration::from_millis(450), "{cut_off:?}");
    assert!(cut_off < Duration::from_millis(2_500), "{cut_off:?}");
    let ordinary = ordinary
        .await
        .unwrap()
        .expect("the ordinary request is served");
    assert_eq!(ordinary.status(), 200);

    assert_eq!(
        fx.metric("sessiongate_client_errors_total{kind=\"body_timeout\"}")
            .await,
        5.0
    );
    assert_eq!(
        fx.metric("sessiongate_refusals_total{reason=\"body_timeout\"}")
            .await,
        5.0
    );
    assert_eq!(
        fx.metric("sessiongate_upstream_errors_total{kind=\"reset\"}")
            .await,
        0.0
    );
}

/// Sends a request head, then its body one byte at a time, `gap` apart, and reads
/// the whole answer.
async fn trickle(fx: &Fixture, path: &str, body: &[u8], gap: Duration) -> String {
    let mut stream = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for byte in body {
        tokio::time::sleep(gap).await;
        stream.write_all(&[*byte]).await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("answered within 5 s")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_slow_honest_upload_is_not_a_gateway_timeout() {
    let fx = Fixture::start(SessionMode::Tab, |c| {
        c.upstream.response_timeout = CfgDuration::from_millis(300);
        c.listen.body_timeout = CfgDuration::from_secs(1);
    })
    .await;
    // 8 bytes 120 ms apart: about a second of upload, over three response timeouts.
    let answer = trickle(&fx, "/echo/upload", b"steadily", Duration::from_millis(120)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.contains("\"body\":\"steadily\""), "{answer}");

    // The response timeout still runs once the body is in.
    let answer = trickle(&fx, "/slow?ms=1500", b"x", Duration::from_millis(10)).await;
    assert_eq!(status_of(&answer), 504, "{answer}");
}

#[tokio::test]
async fn a_client_that_breaks_off_its_body_is_a_client_error() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let mut stream = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo/aborted HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nten bytes!",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);

    assert_eq!(
        metric_reaches(
            &fx,
            "sessiongate_client_errors_total{kind=\"body_aborted\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        fx.metric("sessiongate_upstream_errors_total{kind=\"reset\"}")
            .await,
        0.0,
        "the upstream did nothing wrong"
    );
}
