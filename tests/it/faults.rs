//! Upstream faults against the real gateway with a live session: refused, blackholed,
//! silent, slow, reset mid-body, mis-framed, a kept-alive connection closed at reuse,
//! and an answer before the request body was read. For each: what the client sees,
//! that the upstream connection is not used again after a protocol error, that
//! `sessiongate_upstream_errors_total{kind}` counts it, and that the session is
//! neither ended, corrupted nor duplicated. Each runs in `browser` and `tab` mode
//! (where the upstream must serve the first page for the tab to get its token:
//! refused and blackholed run in `browser` mode only).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sessiongate::config::{Duration as CfgDuration, SessionMode};
use sessiongate::server::Running;
use sessiongate::session::State;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::common::faulty::{closed_port, page, Blackhole, Fault, Faulty};
use crate::common::{gateway_for, header_of, metric_value, read_to_close, status_of};

const KINDS: [&str; 4] = ["connect", "timeout", "reset", "protocol"];

/// Both session modes: the fault tests run with a live session of each.
const MODES: [SessionMode; 2] = [SessionMode::Browser, SessionMode::Tab];

/// A session made by a first request, and the header lines that carry it: the
/// session cookie (`browser` mode), or the browser key cookie and the tab's token
/// (`tab` mode, as the agent sends it on fetch/XHR).
struct Live {
    carry: String,
    handle: String,
}

impl Live {
    /// The value of one of the carrying headers ("" if not carried).
    fn header(&self, name: &str) -> String {
        self.carry
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(String::new(), |(_, v)| v.trim().to_string())
    }
}

/// The value of one metric sample of `gateway` (0 if absent).
fn metric(gateway: &Running, sample: &str) -> f64 {
    metric_value(&gateway.metrics.render(), sample).unwrap_or(0.0)
}

fn upstream_errors(gateway: &Running, kind: &str) -> f64 {
    metric(
        gateway,
        &format!("sessiongate_upstream_errors_total{{kind=\"{kind}\"}}"),
    )
}

/// Asserts that `kind` was counted `n` times and every other kind never.
fn assert_counted(gateway: &Running, kind: &str, n: f64) {
    for other in KINDS {
        let expected = if other == kind { n } else { 0.0 };
        assert_eq!(
            upstream_errors(gateway, other),
            expected,
            "upstream_errors_total{{kind={other:?}}}"
        );
    }
}

/// Sends a raw request on a fresh connection and reads the answer to its close.
async fn exchange(gateway: &Running, raw: String) -> String {
    let mut stream = TcpStream::connect(gateway.public_addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut stream)
        .await
        .expect("the gateway answered and closed in time");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A fetch/XHR-style GET carrying the session (`carry`: see [`Live`]).
fn get(path: &str, carry: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{carry}Connection: close\r\n\r\n")
}

/// Makes the session with a first page load. `browser` mode: the session cookie
/// (the load mints it whatever the upstream does with it). `tab` mode: first contact
/// mints it, and the token comes in the agent's tag on the page (so the upstream must
/// answer `/home` with HTML).
async fn live(gateway: &Running) -> Live {
    let answer = exchange(
        gateway,
        "GET /home HTTP/1.1\r\nHost: gw\r\nAccept: text/html\r\nSec-Fetch-Mode: navigate\r\n\
         Sec-Fetch-Dest: document\r\nConnection: close\r\n\r\n"
            .to_string(),
    )
    .await;
    let head = answer.split("\r\n\r\n").next().unwrap_or("");
    let cookie = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("set-cookie"))
        .map(|(_, value)| value.trim().split(';').next().unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .join("; ");
    assert!(!cookie.is_empty(), "no cookie: {answer}");
    let mut carry = format!("Cookie: {cookie}\r\n");
    let marker = "data-token=\"";
    match answer.find(marker).map(|at| at + marker.len()) {
        Some(start) => {
            let token = &answer[start..start + answer[start..].find('"').unwrap()];
            carry.push_str(&format!("X-Session-Token: {token}\r\n"));
        }
        None => assert!(
            !answer.contains("data-mode=\"tab\""),
            "tab mode without a token: {answer}"
        ),
    }
    let sessions = gateway.store.page(None, 10);
    assert_eq!(sessions.len(), 1, "one session after the first request");
    Live {
        carry,
        handle: sessions[0].handle().to_string(),
    }
}

/// The session is the one made first, still live, and the only one ever made.
fn assert_intact(gateway: &Running, live: &Live) {
    let sessions = gateway.store.page(None, 10);
    assert_eq!(sessions.len(), 1, "sessions in the store");
    assert_eq!(sessions[0].handle().to_string(), live.handle);
    assert_ne!(sessions[0].stored_state(), State::Ended);
    assert_eq!(
        metric(gateway, "sessiongate_sessions_created_total{kind=\"new\"}"),
        1.0
    );
    let page = gateway.metrics.render();
    let ended: f64 = page
        .lines()
        .filter(|line| line.starts_with("sessiongate_sessions_ended_total{"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(ended, 0.0, "sessions ended");
}

/// After a fault, the same cookie still reaches the upstream as the same session.
async fn assert_same_session_upstream(gateway: &Running, upstream: &Faulty, live: &Live) {
    let answer = exchange(gateway, get("/home", &live.carry)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let homes = upstream.seen_at("/home");
    let handles: Vec<_> = homes.iter().filter_map(|s| s.header("x-session")).collect();
    assert!(handles.len() >= 2, "{homes:?}");
    assert!(handles.iter().all(|h| *h == handles[0]), "{handles:?}");
    assert_eq!(handles[0], live.handle);
    assert_intact(gateway, live);
}

/// An upstream that answers `/home` (and anything not under `/fault`) normally and
/// `/fault…` with `fault`.
async fn faulty(fault: Fault) -> Faulty {
    Faulty::start(move |seen| {
        if seen.target().starts_with("/fault") {
            fault.clone()
        } else {
            Fault::Answer(page("home"))
        }
    })
    .await
}

fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test]
async fn a_refused_connection_is_a_502_counted_as_connect() {
    let url = closed_port().await;
    let gateway = gateway_for(&url, SessionMode::Browser, |_| {}).await;
    let live = live(&gateway).await;
    let answer = exchange(&gateway, get("/fault", &live.carry)).await;
    assert_eq!(status_of(&answer), 502, "{answer}");
    assert!(body_of(&answer).contains("cannot be reached"), "{answer}");
    assert_eq!(
        header_of(&answer, "x-content-type-options"),
        Some("nosniff")
    );
    assert_counted(&gateway, "connect", 2.0);
    assert_intact(&gateway, &live);
}

#[tokio::test]
async fn a_blackholed_upstream_is_a_504_after_the_connect_timeout() {
    let blackhole = Blackhole::start().await;
    let gateway = gateway_for(&blackhole.url(), SessionMode::Browser, |config| {
        config.upstream.connect_timeout = CfgDuration::from_millis(300);
    })
    .await;
    let live = live(&gateway).await;
    let started = Instant::now();
    let answer = exchange(&gateway, get("/fault", &live.carry)).await;
    let took = started.elapsed();
    assert_eq!(status_of(&answer), 504, "{answer}");
    assert!(
        body_of(&answer).contains("did not answer in time"),
        "{answer}"
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_counted(&gateway, "timeout", 2.0);
    assert_intact(&gateway, &live);
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_a_504_after_the_response_timeout() {
    for mode in MODES {
        let upstream = faulty(Fault::Silent).await;
        let gateway = gateway_for(&upstream.url(), mode, |config| {
            config.upstream.response_timeout = CfgDuration::from_millis(300);
        })
        .await;
        let live = live(&gateway).await;
        let started = Instant::now();
        let answer = exchange(&gateway, get("/fault", &live.carry)).await;
        assert_eq!(status_of(&answer), 504, "{answer}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_counted(&gateway, "timeout", 1.0);
        // The silent connection carries a request that was never answered: it is closed,
        // never used for another request.
        assert!(
            upstream.wait_closed(1).await,
            "the silent connection was kept"
        );
        assert_same_session_upstream(&gateway, &upstream, &live).await;
        let silent = upstream.seen_at("/fault");
        assert_eq!(silent.len(), 1);
        assert!(upstream
            .seen_at("/home")
            .iter()
            .all(|home| home.conn != silent[0].conn || home.nth < silent[0].nth));
    }
}

const SLOW_ANSWER: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nslow but ok";

#[tokio::test]
async fn an_upstream_answering_byte_by_byte_within_the_timeout_is_passed_through_whole() {
    for mode in MODES {
        let answer = format!("{SLOW_ANSWER}!");
        let upstream = faulty(Fault::Trickle(
            answer.into_bytes(),
            Duration::from_millis(5),
        ))
        .await;
        let gateway = gateway_for(&upstream.url(), mode, |config| {
            config.upstream.response_timeout = CfgDuration::from_secs(2);
        })
        .await;
        let live = live(&gateway).await;
        let answer = exchange(&gateway, get("/fault", &live.carry)).await;
        assert_eq!(status_of(&answer), 200, "{answer}");
        assert_eq!(body_of(&answer), "slow but ok!");
        assert_counted(&gateway, "timeout", 0.0);
        assert_same_session_upstream(&gateway, &upstream, &live).await;
    }
}

#[tokio::test]
async fn an_upstream_head_slower_than_the_response_timeout_is_a_504() {
    for mode in MODES {
        // 80 bytes of head at 20 ms each: 1.6 s, against a 300 ms response timeout.
        let upstream = faulty(Fault::Trickle(
            SLOW_ANSWER.as_bytes().to_vec(),
            Duration::from_millis(20),
        ))
        .await;
        let gateway = gateway_for(&upstream.url(), mode, |config| {
            config.upstream.response_timeout = CfgDuration::from_millis(300);
        })
        .await;
        let live = live(&gateway).await;
        let answer = exchange(&gateway, get("/fault", &live.carry)).await;
        assert_eq!(status_of(&answer), 504, "{answer}");
        assert_counted(&gateway, "timeout", 1.0);
        assert_same_session_upstream(&gateway, &upstream, &live).await;
    }
}

/// A connection reset after part of a sized, chunked or close-delimited body: the
/// client gets the head and what came, then its connection closes without the rest,
/// never a clean end.
#[tokio::test]
async fn a_reset_mid_body_is_never_a_complete_response_and_counts_as_reset() {
    for mode in MODES {
        for (name, head, sent) in [
            ("sized", "Content-Length: 100\r\n", "0123456789"),
            (
                "chunked",
                "Transfer-Encoding: chunked\r\n",
                "a\r\n0123456789\r\n",
            ),
            // Delimited by the close: only a FIN ends it; an RST is no end.
            ("close-delimited", "Connection: close\r\n", "0123456789"),
        ] {
            let partial =
                format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{head}\r\n{sent}");
            let upstream = faulty(Fault::ResetAfter(partial.into_bytes())).await;
            let gateway = gateway_for(&upstream.url(), mode, |_| {}).await;
            let live = live(&gateway).await;
            // Keep-alive: only an abnormal end closes the client's connection.
            let mut stream = TcpStream::connect(gateway.public_addr).await.unwrap();
            let request = format!("GET /fault HTTP/1.1\r\nHost: gw\r\n{}\r\n", live.carry);
            stream.write_all(request.as_bytes()).await.unwrap();
            let answer = read_to_close(&mut stream)
                .await
                .unwrap_or_else(|| panic!("{name}: the client connection stayed open"));
            let answer = String::from_utf8_lossy(&answer).into_owned();
            assert_eq!(status_of(&answer), 200, "{name}: {answer}");
            let body = body_of(&answer);
            match header_of(&answer, "content-length") {
                Some(length) => assert!(body.len() < length.parse().unwrap(), "{name}: {answer:?}"),
                None => assert!(!body.ends_with("0\r\n\r\n"), "{name}: {answer:?}"),
            }
            assert_counted(&gateway, "reset", 1.0);
            assert_same_session_upstream(&gateway, &upstream, &live).await;
        }
    }
}

/// Responses no HTTP/1.1 parser may guess at: 502 (or, when the fault is in a body
/// whose head has gone out already, a cut-off body), counted as `protocol`, and the
/// connection that carried them is closed, never reused.
#[tokio::test]
async fn bad_framing_is_a_502_and_its_connection_is_discarded() {
    for mode in MODES {
        let huge_head = format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
            "b".repeat(256 * 1024)
        );
        for (name, answer, status) in [
            ("head too large", huge_head.as_str(), 502),
            (
                "cl+te",
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                502,
            ),
            (
                "garbage status line",
                "HTTP/1.1 two hundred OK\r\nContent-Length: 2\r\n\r\nok",
                502,
            ),
            ("not http", "SSH-2.0-OpenSSH_9.6\r\n\r\n", 502),
            (
                "bad content-length",
                "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nok",
                502,
            ),
            (
                "invalid chunk size",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
                200,
            ),
        ] {
            let upstream = faulty(Fault::Answer(answer.as_bytes().to_vec())).await;
            let gateway = gateway_for(&upstream.url(), mode, |_| {}).await;
            let live = live(&gateway).await;
            let mut stream = TcpStream::connect(gateway.public_addr).await.unwrap();
            let request = format!("GET /fault HTTP/1.1\r\nHost: gw\r\n{}\r\n", live.carry);
            stream.write_all(request.as_bytes()).await.unwrap();
            let seen = if status == 502 {
                let mut head = vec![0u8; 4096];
                let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head))
                    .await
                    .unwrap_or_else(|_| panic!("{name}: no answer"))
                    .unwrap();
                String::from_utf8_lossy(&head[..n]).into_owned()
            } else {
                let answer = read_to_close(&mut stream)
                    .await
                    .unwrap_or_else(|| panic!("{name}: the client connection stayed open"));
                String::from_utf8_lossy(&answer).into_owned()
            };
            if status == 200 {
                // The head may have gone out before the body's first chunk broke: then
                // the body is cut off; or it had not, and the connection closes without
                // an answer. Never a complete one.
                if !seen.is_empty() {
                    assert_eq!(status_of(&seen), 200, "{name}: {seen}");
                    assert!(!body_of(&seen).ends_with("0\r\n\r\n"), "{name}: {seen:?}");
                }
            } else {
                assert_eq!(status_of(&seen), status, "{name}: {seen}");
            }
            assert!(!seen.contains("hello"), "{name}: {seen}");
            assert_counted(&gateway, "protocol", 1.0);
            assert!(
                upstream.wait_closed(1).await,
                "{name}: the upstream connection was kept"
            );
            let before = upstream.accepted();
            assert_same_session_upstream(&gateway, &upstream, &live).await;
            let after = upstream.seen_at("/home");
            let last = after.last().unwrap();
            let faulted = &upstream.seen_at("/fault")[0];
            assert!(
                last.conn != faulted.conn,
                "{name}: a request went on the connection of the bad answer"
            );
            assert!(upstream.accepted() >= before, "{name}");
        }
    }
}

/// The script for the reuse tests: every connection answers its first request and
/// closes without a byte at the second, as a server whose keep-alive timer fires just
/// as the request arrives.
async fn closes_at_reuse() -> Faulty {
    Faulty::start(|seen| {
        if seen.nth == 0 {
            Fault::Answer(page("fresh"))
        } else {
            Fault::CloseUnanswered
        }
    })
    .await
}

/// An idempotent request without a body that meets a pooled connection closed at
/// reuse is sent once more, on a new connection; the client never notices.
#[tokio::test]
async fn an_idempotent_request_on_a_connection_closed_at_reuse_is_retried_once() {
    for mode in MODES {
        for method in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"] {
            let upstream = closes_at_reuse().await;
            let gateway = gateway_for(&upstream.url(), mode, |_| {}).await;
            let live = live(&gateway).await;
            let raw = format!(
                "{method} /again HTTP/1.1\r\nHost: gw\r\n{}Connection: close\r\n\r\n",
                live.carry
            );
            let answer = exchange(&gateway, raw).await;
            assert_eq!(status_of(&answer), 200, "{method}: {answer}");
            let again = upstream.seen_at("/again");
            assert_eq!(again.len(), 2, "{method}: sent twice: {again:?}");
            assert_eq!(
                (again[0].conn, again[0].nth),
                (0, 1),
                "{method}: first on the reused"
            );
            assert_eq!(again[1].nth, 0, "{method}: then on a fresh connection");
            assert_ne!(again[1].conn, 0, "{method}");
            assert_eq!(
                again[1].header("x-session"),
                Some(live.handle.as_str()),
                "{method}"
            );
            // The attempt that failed is counted; the client got its answer.
            assert_counted(&gateway, "reset", 1.0);
            assert_intact(&gateway, &live);
        }
    }
}

/// Retried once, never twice: when the new connection fails the same way, the
/// client gets 502.
#[tokio::test]
async fn a_retry_is_made_at_most_once() {
    for mode in MODES {
        let upstream = Faulty::start(|seen| {
            if seen.target() == "/home" {
                Fault::Answer(page("home"))
            } else {
                Fault::CloseUnanswered
            }
        })
        .await;
        let gateway = gateway_for(&upstream.url(), mode, |_| {}).await;
        let live = live(&gateway).await;
        let answer = exchange(&gateway, get("/again", &live.carry)).await;
        assert_eq!(status_of(&answer), 502, "{answer}");
        assert_eq!(upstream.seen_at("/again").len(), 2);
        assert_counted(&gateway, "reset", 2.0);
        assert_intact(&gateway, &live);
    }
}

/// A POST (or any request with a body) is never sent twice: the upstream may have
/// acted on it. The client gets 502 and the upstream saw it once.
#[tokio::test]
async fn a_post_on_a_connection_closed_at_reuse_is_never_retried() {
    for mode in MODES {
        for (method, body) in [("POST", "a=1"), ("PUT", "x"), ("POST", "")] {
            let upstream = closes_at_reuse().await;
            let gateway = gateway_for(&upstream.url(), mode, |_| {}).await;
            let live = live(&gateway).await;
            let raw = format!(
                "{method} /submit HTTP/1.1\r\nHost: gw\r\n{}Content-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                live.carry,
                body.len()
            );
            let answer = exchange(&gateway, raw).await;
            assert_eq!(status_of(&answer), 502, "{method} {body:?}: {answer}");
            assert!(body_of(&answer).contains("no valid response"), "{answer}");
            let submits = upstream.seen_at("/submit");
            assert_eq!(submits.len(), 1, "{method} {body:?}: {submits:?}");
            assert_eq!(submits[0].body, body.as_bytes());
            assert_counted(&gateway, "reset", 1.0);
            assert_same_session_upstream(&gateway, &upstream, &live).await;
        }
    }
}

/// A pooled connection the upstream closed while idle is noticed and not used: even a
/// POST goes through, on a new connection.
#[tokio::test]
async fn an_idle_connection_closed_by_the_upstream_is_not_used() {
    for mode in MODES {
        let upstream = Faulty::start(|_| Fault::AnswerClose(page("once"))).await;
        let gateway = gateway_for(&upstream.url(), mode, |_| {}).await;
        let live = live(&gateway).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let raw = format!(
            "POST /submit HTTP/1.1\r\nHost: gw\r\n{}Content-Length: 3\r\nConnection: close\r\n\r\na=1",
            live.carry
        );
        let answer = exchange(&gateway, raw).await;
        assert_eq!(status_of(&answer), 200, "{answer}");
        assert_eq!(upstream.seen_at("/submit").len(), 1);
        assert_counted(&gateway, "reset", 0.0);
        assert_intact(&gateway, &live);
    }
}

/// The upstream answers (413, say) before reading the request body and closes. The
/// client gets that answer without waiting for its upload to end, and the rest of
/// its body is never read as a request of its own.
#[tokio::test]
async fn an_early_answer_reaches_the_client_and_nothing_is_smuggled() {
    for mode in MODES {
        let early = "HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large";
        let upstream = faulty(Fault::Early(early.as_bytes().to_vec())).await;
        let gateway = gateway_for(&upstream.url(), mode, |_| {}).await;
        let live = live(&gateway).await;

        let length = 1_000_000;
        let mut stream = TcpStream::connect(gateway.public_addr).await.unwrap();
        let head = format!(
            "POST /fault/upload HTTP/1.1\r\nHost: gw\r\n{}Content-Length: {length}\r\n\r\n",
            live.carry
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&[b'x'; 1000]).await.unwrap();
        // The answer comes while the upload is still going on.
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .expect("the early answer arrived without the body being finished")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert_eq!(status_of(&answer), 413, "{answer}");

        // The rest of the body holds something shaped like a request: it must never be
        // served as one.
        let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: gw\r\n{}\r\n", live.carry);
        let mut rest = smuggled.repeat(64).into_bytes();
        rest.resize(length - 1000, b'x');
        // The gateway may refuse the rest (the connection closes under the write).
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&rest)).await;
        let mut tail = Vec::new();
        let ended =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut tail)).await;
        assert!(
            ended.is_ok(),
            "the client connection was kept after an unread body"
        );
        let tail = String::from_utf8_lossy(&tail);
        assert!(!tail.contains("HTTP/1.1 200"), "something answered: {tail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(upstream.seen_at("/smuggled").is_empty(), "smuggled through");
        assert_eq!(upstream.seen_at("/fault/upload").len(), 1);
        assert_counted(&gateway, "reset", 0.0);
        assert_same_session_upstream(&gateway, &upstream, &live).await;
    }
}

/// The upstream starts answering before the body is in, and then the client stalls
/// its upload: the exchange is the client's failure (`body_timeout`), not the
/// upstream's, though the response body breaks off because of it.
#[tokio::test]
async fn a_client_stalling_after_an_early_answer_is_not_an_upstream_error() {
    for mode in MODES {
        let early =
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nstarted";
        let upstream = faulty(Fault::EarlyOpen(early.as_bytes().to_vec())).await;
        let gateway = gateway_for(&upstream.url(), mode, |config| {
            config.listen.body_timeout = CfgDuration::from_millis(300);
        })
        .await;
        let live = live(&gateway).await;
        let mut stream = TcpStream::connect(gateway.public_addr).await.unwrap();
        let head = format!(
            "POST /fault/upload HTTP/1.1\r\nHost: gw\r\n{}Content-Length: 1000\r\n\r\npart",
            live.carry
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let answer = read_to_close(&mut stream)
            .await
            .expect("the stalled exchange ended");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if !answer.is_empty() && status_of(&answer) == 200 {
            assert!(body_of(&answer).len() < 100, "complete? {answer}");
        }
        assert_eq!(
            metric(
                &gateway,
                "sessiongate_client_errors_total{kind=\"body_timeout\"}"
            ),
            1.0
        );
        assert_counted(&gateway, "reset", 0.0);
        assert_same_session_upstream(&gateway, &upstream, &live).await;
    }
}

/// A page whose compressed body is corrupt: the agent's injection decodes it and
/// fails; the client's page is cut off (never a clean end) and the fault is the
/// upstream's `protocol`.
#[tokio::test]
async fn a_corrupt_compressed_page_is_cut_off_and_counted_as_protocol() {
    let garbage = "this is not gzip at all, not even its magic bytes....";
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Encoding: gzip\r\n\
         Content-Length: {}\r\n\r\n{garbage}",
        garbage.len()
    );
    let upstream = faulty(Fault::Answer(answer.into_bytes())).await;
    let gateway = gateway_for(&upstream.url(), SessionMode::Browser, |_| {}).await;
    let live = live(&gateway).await;
    let raw = format!(
        "GET /fault/page HTTP/1.1\r\nHost: gw\r\n{}Accept: text/html\r\n\
         Sec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n\r\n",
        live.carry
    );
    let mut stream = TcpStream::connect(gateway.public_addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut stream)
        .await
        .expect("the broken page closed its connection");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    if !answer.is_empty() {
        assert_eq!(status_of(&answer), 200, "{answer}");
        assert!(!body_of(&answer).ends_with("0\r\n\r\n"), "{answer:?}");
    }
    assert_counted(&gateway, "protocol", 1.0);
    assert_same_session_upstream(&gateway, &upstream, &live).await;
}

/// An upstream that sends the head and part of the body, then nothing: the body is
/// broken off after `upstream.response_timeout` of waiting (counted as `timeout`), over
/// HTTP/1.1 and HTTP/2 alike, and its upstream slot is given back. Without this an
/// HTTP/2 stream (whose connection stays busy with pings) waited for ever.
#[tokio::test]
async fn a_stalled_upstream_body_is_broken_off_after_the_response_timeout() {
    for mode in MODES {
        let partial =
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789";
        let upstream = faulty(Fault::Answer(partial.as_bytes().to_vec())).await;
        let gateway = gateway_for(&upstream.url(), mode, |config| {
            config.upstream.response_timeout = CfgDuration::from_millis(300);
            // One slot: a stalled body that kept it would starve the next request.
            config.upstream.max_in_flight = 1;
        })
        .await;
        let live = live(&gateway).await;

        let started = Instant::now();
        let mut stream = TcpStream::connect(gateway.public_addr).await.unwrap();
        let request = format!("GET /fault HTTP/1.1\r\nHost: gw\r\n{}\r\n", live.carry);
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_to_close(&mut stream)
            .await
            .expect("the stalled response was broken off");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(status_of(&answer), 200, "{answer}");
        assert_eq!(body_of(&answer), "0123456789", "{answer}");
        assert_counted(&gateway, "timeout", 1.0);

        let started = Instant::now();
        let stream = TcpStream::connect(gateway.public_addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = http::Request::get(format!("http://{}/fault", gateway.public_addr))
            .header("cookie", live.header("cookie"))
            .header("x-session-token", live.header("x-session-token"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
            .await
            .expect("the stalled HTTP/2 stream ended");
        assert!(body.is_err(), "a stalled body must not end cleanly");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_counted(&gateway, "timeout", 2.0);

        // The one upstream slot is free again.
        assert_same_session_upstream(&gateway, &upstream, &live).await;
    }
}

/// A body that keeps coming, slowly, is no stall: each pause is shorter than the
/// response timeout, the whole takes longer, and it is passed on whole.
#[tokio::test]
async fn a_slow_steady_upstream_body_longer_than_the_response_timeout_is_passed_whole() {
    for mode in MODES {
        let upstream = faulty(Fault::Drip {
            head: b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\n"
                .to_vec(),
            body: b"drip by drip".to_vec(),
            pause: Duration::from_millis(100),
        })
        .await;
        let gateway = gateway_for(&upstream.url(), mode, |config| {
            config.upstream.response_timeout = CfgDuration::from_millis(300);
        })
        .await;
        let live = live(&gateway).await;
        let started = Instant::now();
        let answer = exchange(&gateway, get("/fault", &live.carry)).await;
        assert!(
            started.elapsed() >= Duration::from_millis(1100),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(status_of(&answer), 200, "{answer}");
        assert_eq!(body_of(&answer), "drip by drip");
        assert_counted(&gateway, "timeout", 0.0);
        assert_same_session_upstream(&gateway, &upstream, &live).await;
    }
}

/// A client slow to read is no upstream stall: the gateway does not wait for the
/// upstream while the client's side is full, so a pause longer than the response
/// timeout in the client's reading breaks nothing and counts nothing.
#[tokio::test]
async fn a_client_slow_to_read_is_not_an_upstream_stall() {
    for mode in MODES {
        let size = 4 * 1024 * 1024;
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
        )
        .into_bytes();
        answer.resize(answer.len() + size, b'z');
        let upstream = faulty(Fault::Answer(answer)).await;
        let gateway = gateway_for(&upstream.url(), mode, |config| {
            config.upstream.response_timeout = CfgDuration::from_millis(300);
        })
        .await;
        let live = live(&gateway).await;
        let mut stream = TcpStream::connect(gateway.public_addr).await.unwrap();
        stream
            .write_all(get("/fault", &live.carry).as_bytes())
            .await
            .unwrap();
        let mut first = vec![0u8; 64 * 1024];
        stream.read_exact(&mut first).await.unwrap();
        // Three response timeouts without reading.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
            .await
            .expect("the rest came")
            .unwrap();
        let mut whole = first;
        whole.extend_from_slice(&rest);
        let answer = String::from_utf8_lossy(&whole);
        assert_eq!(status_of(&answer), 200);
        assert_eq!(body_of(&answer).len(), size, "the whole body");
        assert_counted(&gateway, "timeout", 0.0);
        assert_same_session_upstream(&gateway, &upstream, &live).await;
    }
}
