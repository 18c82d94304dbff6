//! Upgraded connections: a WebSocket handshake both sides completed is tunnelled with
//! the session, refused from foreign origins and closed when the session ends; no
//! other upgrade (`h2c` above all) and no other `101` ever opens a tunnel.

use std::time::Duration;

use sessiongate::config::SessionMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::scripted::{head_header, Scripted, Then};
use crate::common::upstream::ws_accept;
use crate::common::{
    gateway_for, header_of, raw_exchange, read_to_close, session_cookies, status_of, Fixture,
};

/// RFC 6455 §1.3's example key.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A browser's WebSocket handshake headers.
fn websocket_head(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Reads a response head (up to the blank line) byte by byte.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("a response head in time")
            .unwrap();
        assert_eq!(n, 1, "closed before the head ended: {answer:?}");
        answer.push(byte[0]);
    }
    String::from_utf8(answer).unwrap()
}

/// Opens a WebSocket through the gateway; returns the stream after the 101 head.
async fn open_tunnel(fx: &Fixture, extra: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
    let head = websocket_head("/upgrade?__sg_t=x", extra);
    stream.write_all(head.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

#[tokio::test]
async fn a_websocket_is_tunnelled_with_the_session() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let cookies = session_cookies(&fx).await;
    let (mut stream, head) = open_tunnel(&fx, &format!("Cookie: {cookies}\r\n")).await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert_eq!(header_of(&head, "upgrade"), Some("websocket"));
    assert_eq!(
        header_of(&head, "sec-websocket-accept"),
        Some(ws_accept(KEY.as_bytes()).as_str())
    );
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
    assert_eq!(upgrade.header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(upgrade.header("sec-websocket-key").as_deref(), Some(KEY));
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
async fn a_websocket_from_a_foreign_origin_is_refused() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let answer = raw_exchange(
        fx.gateway.public_addr,
        websocket_head("/upgrade", "Origin: http://evil.example\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 403, "{answer}");
    assert!(fx.upstream.requests().is_empty());
    let (_stream, head) = open_tunnel(&fx, "Origin: http://gw\r\n").await;
    assert_eq!(status_of(&head), 101, "own origin is fine: {head}");
}

/// h2c smuggling: a gateway that forwards `Upgrade: h2c` hands the client a raw
/// HTTP/2 connection to the backend past every check. The header never reaches the
/// upstream — nor does any upgrade that is not a complete WebSocket handshake — so a
/// backend that upgrades whatever it is asked to (like the test upstream) answers a
/// plain request.
#[tokio::test]
async fn h2c_and_incomplete_upgrades_go_on_as_plain_requests() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let attempts = [
        "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        "Upgrade: h2c, websocket\r\nConnection: Upgrade\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n",
        "Upgrade: echo\r\nConnection: Upgrade\r\n",
    ];
    for (i, attempt) in attempts.iter().enumerate() {
        let mut stream = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
        let raw = format!("GET /upgrade?attempt={i} HTTP/1.1\r\nHost: gw\r\n{attempt}\r\n");
        stream.write_all(raw.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert_eq!(status_of(&head), 200, "{attempt}: {head}");
        // The connection is still HTTP: a second request gets a second response.
        stream
            .write_all(b"GET /after HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let rest = read_to_close(&mut stream).await.expect("closed in time");
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.contains("HTTP/1.1 200"), "{attempt}: {rest}");
    }
    let seen = fx.upstream.wait_for(2 * attempts.len()).await;
    for request in &seen {
        assert!(request.header("upgrade").is_none(), "{request:?}");
        assert!(request.header("http2-settings").is_none(), "{request:?}");
        assert!(request.header_all("connection").is_empty(), "{request:?}");
    }
}

/// The raw bytes a lying upstream sends after its `101`: if they reach the client,
/// the client has a tunnel.
const AFTER_101: &str = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED";

/// A scripted upstream that answers every request with `101` and `extra` headers.
async fn switching_upstream(extra: &'static str) -> Scripted {
    Scripted::start(move |head| {
        let accept = head_header(head, "sec-websocket-key")
            .map(|key| ws_accept(key.as_bytes()))
            .unwrap_or_default();
        let extra = extra.replace("{accept}", &accept);
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n{extra}\r\n{AFTER_101}"
        );
        (answer.into_bytes(), Then::KeepOpen)
    })
    .await
}

/// The WebSocket-`101` variant of smuggling: an upstream `101` to a request that
/// asked for no WebSocket is a 502, and that upstream connection is dropped.
#[tokio::test]
async fn an_upstream_101_without_a_websocket_request_is_a_502() {
    let upstream = switching_upstream("Upgrade: h2c\r\n").await;
    let gateway = gateway_for(&upstream.url(), SessionMode::Tab, |_| {}).await;
    let requests = [
        "GET /plain HTTP/1.1\r\nHost: gw\r\n\r\n".to_string(),
        "GET /h2c HTTP/1.1\r\nHost: gw\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n".to_string(),
    ];
    for (i, request) in requests.iter().enumerate() {
        let mut stream = TcpStream::connect(gateway.public_addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert_eq!(status_of(&head), 502, "{request}: {head}");
        stream
            .write_all(b"GET /again HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let rest = read_to_close(&mut stream).await.expect("closed in time");
        let rest = String::from_utf8_lossy(&rest);
        assert!(!rest.contains("SMUGGLED"), "{request}: {rest}");
        assert!(
            upstream.wait_closed(2 * i + 2).await,
            "the gateway kept the upstream connections of bogus 101s open"
        );
    }
    for head in upstream.heads() {
        assert!(head_header(&head, "upgrade").is_none(), "{head}");
    }
}

/// A `101` that does not complete the client's WebSocket handshake — wrong or no
/// `Sec-WebSocket-Accept`, another protocol — opens no tunnel either.
#[tokio::test]
async fn an_upstream_101_that_does_not_complete_the_handshake_is_a_502() {
    for extra in [
        "Upgrade: websocket\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n",
        "Upgrade: websocket\r\n",
        "Upgrade: h2c\r\nSec-WebSocket-Accept: {accept}\r\n",
        "Upgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Accept: {accept}\r\n",
    ] {
        let upstream = switching_upstream(extra).await;
        let gateway = gateway_for(&upstream.url(), SessionMode::Tab, |_| {}).await;
        let mut stream = TcpStream::connect(gateway.public_addr).await.unwrap();
        stream
            .write_all(websocket_head("/ws", "").as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut stream).await;
        assert_eq!(status_of(&head), 502, "{extra}: {head}");
        stream.write_all(b"raw bytes for the backend").await.unwrap();
        let rest = read_to_close(&mut stream).await.unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&rest).contains("SMUGGLED"),
            "{extra}"
        );
        assert!(upstream.wait_closed(1).await, "{extra}: upstream kept");
    }
    // The complete handshake from the same script is tunnelled.
    let upstream =
        switching_upstream("Upgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n").await;
    let gateway = gateway_for(&upstream.url(), SessionMode::Tab, |_| {}).await;
    let mut stream = TcpStream::connect(gateway.public_addr).await.unwrap();
    stream
        .write_all(websocket_head("/ws", "").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert_eq!(status_of(&head), 101, "{head}");
    let mut tunnelled = vec![0u8; AFTER_101.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut tunnelled))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tunnelled, AFTER_101.as_bytes());
}
