//! Response framing: the client never gets a response whose framing says something
//! else than what is sent. A scripted raw upstream writes exactly the bytes hyper
//! would never produce.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sessiongate::config::SessionMode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::scripted::{Scripted, Then};
use crate::common::{gateway_for, header_of, raw_exchange, read_to_close, status_of};

/// `Content-Length` next to `Transfer-Encoding: chunked` (or a coding hyper does not
/// decode) is read one way by hyper and maybe another by whoever sent it; what lies
/// between is another response on a shared connection. The gateway answers 502 and
/// never uses that upstream connection again.
#[tokio::test]
async fn an_upstream_response_with_ambiguous_framing_is_a_502() {
    for framing in [
        "Content-Length: 60\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let upstream = Scripted::start(move |_| {
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{framing}\r\n\
                 5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED"
            );
            (answer.into_bytes(), Then::KeepOpen)
        })
        .await;
        let gateway = gateway_for(&upstream.url(), SessionMode::Tab, |_| {}).await;
        for round in 0..2 {
            let answer = raw_exchange(
                gateway.public_addr,
                b"GET /framed HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert_eq!(
                status_of(&answer),
                502,
                "{framing} (round {round}): {answer}"
            );
            assert!(!answer.contains("hello"), "{framing}: {answer}");
            assert!(!answer.contains("POISONED"), "{framing}: {answer}");
            assert!(
                upstream.wait_closed(round + 1).await,
                "{framing}: the upstream connection was kept"
            );
        }
    }
}

/// A body that ends early must end the client's response abnormally: over HTTP/1.1
/// the connection closes without the rest (`Content-Length`) or without the last
/// chunk, never with a clean end a client would take for the whole page.
#[tokio::test]
async fn a_truncated_upstream_body_is_never_ended_cleanly_over_http1() {
    for (name, head, sent) in [
        ("sized", "Content-Length: 100\r\n", "0123456789"),
        (
            "chunked",
            "Transfer-Encoding: chunked\r\n",
            "a\r\n0123456789\r\n",
        ),
    ] {
        for (kind, content_type, extra) in [
            ("plain", "text/plain", ""),
            // A page on its way through the agent injection.
            (
                "page",
                "text/html",
                "Accept: text/html\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n",
            ),
        ] {
            let upstream = Scripted::start(move |_| {
                let answer =
                    format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{head}\r\n{sent}");
                (answer.into_bytes(), Then::Close)
            })
            .await;
            let gateway = gateway_for(&upstream.url(), SessionMode::Browser, |_| {}).await;
            let mut stream = TcpStream::connect(gateway.public_addr).await.unwrap();
            // Keep-alive: only an abnormal end closes this connection.
            let request = format!("GET /truncated HTTP/1.1\r\nHost: gw\r\n{extra}\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let answer = read_to_close(&mut stream)
                .await
                .unwrap_or_else(|| panic!("{name}/{kind}: the connection stayed open"));
            let answer = String::from_utf8_lossy(&answer).into_owned();
            assert_eq!(status_of(&answer), 200, "{name}/{kind}: {answer}");
            let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            match header_of(&answer, "content-length") {
                Some(length) => {
                    let length: usize = length.parse().unwrap();
                    assert!(body.len() < length, "{name}/{kind}: complete? {answer:?}");
                }
                None => {
                    assert_eq!(
                        header_of(&answer, "transfer-encoding"),
                        Some("chunked"),
                        "{name}/{kind}: {answer:?}"
                    );
                    assert!(
                        !body.ends_with("0\r\n\r\n"),
                        "{name}/{kind}: a clean last chunk after a truncated body: {answer:?}"
                    );
                }
            }
        }
    }
}

/// Over HTTP/2 a truncated body resets the stream: the client sees an error, not an
/// end.
#[tokio::test]
async fn a_truncated_upstream_body_resets_the_http2_stream() {
    let upstream = Scripted::start(|_| {
        let answer =
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789";
        (answer.as_bytes().to_vec(), Then::Close)
    })
    .await;
    let gateway = gateway_for(&upstream.url(), SessionMode::Tab, |_| {}).await;
    let stream = TcpStream::connect(gateway.public_addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/truncated", gateway.public_addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("the stream ended in time");
    let error = body.expect_err("a truncated body must not end cleanly");
    let error = format!("{error:?}");
    assert!(
        error.contains("Reset") || error.contains("INTERNAL_ERROR"),
        "not a stream reset: {error}"
    );
}
