//! Upgraded connections (WebSocket and friends): tunnelled with the session, refused
//! from foreign origins, closed when the session ends.

use std::time::Duration;

use sessiongate::config::SessionMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{header_of, raw_exchange, session_cookies, status_of, Fixture};

/// Opens an upgrade through the gateway; returns the stream after the 101 head.
async fn open_tunnel(fx: &Fixture, extra: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
    let head = format!(
        "GET /upgrade?__sg_t=x HTTP/1.1\r\nHost: gw\r\nUpgrade: echo\r\nConnection: Upgrade\r\n{extra}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("101 head in time")
            .unwrap();
        assert_eq!(n, 1, "closed before the head ended: {answer:?}");
        answer.push(byte[0]);
    }
    (stream, String::from_utf8(answer).unwrap())
}

#[tokio::test]
async fn upgrade_is_tunnelled_with_the_session() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let cookies = session_cookies(&fx).await;
    let (mut stream, head) = open_tunnel(&fx, &format!("Cookie: {cookies}\r\n")).await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert_eq!(header_of(&head, "upgrade"), Some("echo"));
    assert_eq!(header_of(&head, "x-session-state"), Some("active"));

    stream.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping through the tunnel");

    let seen = fx.upstream.wait_for(2).await;
    let upgrade = &seen[1];
    assert_eq!(upgrade.uri, "/upgrade");
    assert_eq!(upgrade.header("upgrade").as_deref(), Some("echo"));
    assert_eq!(
        upgrade.header_all("x-session"),
        seen[0].header_all("x-session")
    );

    // Ending the session closes its tunnel (within one signal period).
    let session = fx.gateway.store.page(None, 10).pop().unwrap();
    fx.gateway.store.end(
        &session,
        sessiongate::session::EndReason::Admin,
        fx.gateway.clock.now(),
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "tunnel still open after its session ended");
}

#[tokio::test]
async fn upgrade_from_a_foreign_origin_is_refused() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let answer = raw_exchange(
        fx.gateway.public_addr,
        b"GET /upgrade HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Origin: http://evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 403, "{answer}");
    assert!(fx.upstream.requests().is_empty());
    let (_stream, head) = open_tunnel(&fx, "Origin: http://gw\r\n").await;
    assert_eq!(status_of(&head), 101, "own origin is fine: {head}");
}
