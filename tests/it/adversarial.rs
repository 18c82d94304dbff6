//! Hostile input over raw TCP: spoofed identity headers, smuggling framing, path
//! spellings that try to reach the reserved prefix upstream, slow clients.

use std::time::{Duration, Instant};

use sessiongate::config::{Duration as CfgDuration, SessionMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{header_of, raw_exchange, session_cookies, status_of, Fixture};

#[tokio::test]
async fn spoofed_session_headers_never_reach_the_upstream() {
    let fx = Fixture::start(SessionMode::Browser, |_| {}).await;
    let cookies = session_cookies(&fx).await;
    let genuine = fx.upstream.wait_for(1).await[0]
        .header("x-session")
        .unwrap();

    let spoofs = [
        "X-Session: 00000000-0000-0000-0000-000000000001\r\n",
        "X_Session: 00000000-0000-0000-0000-000000000002\r\n",
        "x-session: 00000000-0000-0000-0000-000000000003\r\n",
        "X-SESSION-PARENT: 00000000-0000-0000-0000-000000000004\r\n",
        "x_session_token: forged\r\n",
        "Connection: X-Custom\r\nX-Custom: should-go\r\n",
        "Connection: keep-alive, X-Session\r\nX-Session: 00000000-0000-0000-0000-000000000005\r\n",
    ];
    for spoof in spoofs {
        for cookie in [Some(cookies.as_str()), None] {
            let cookie_line = cookie
                .map(|c| format!("Cookie: {c}\r\n"))
                .unwrap_or_default();
            let raw = format!(
                "GET /spoof HTTP/1.1\r\nHost: gw\r\n{cookie_line}{spoof}Connection: close\r\n\r\n"
            );
            let answer = raw_exchange(fx.gateway.public_addr, raw.as_bytes()).await;
            assert_eq!(status_of(&answer), 200, "{spoof}: {answer}");
        }
    }
    // A chunked body with an X-Session trailer.
    let raw = format!(
        "POST /spoof HTTP/1.1\r\nHost: gw\r\nCookie: {cookies}\r\nTransfer-Encoding: chunked\r\n\
         Trailer: X-Session\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\
         X-Session: 00000000-0000-0000-0000-000000000006\r\nX_Session: 7\r\nX-Fine: yes\r\n\r\n"
    );
    let answer = raw_exchange(fx.gateway.public_addr, raw.as_bytes()).await;
    assert_eq!(status_of(&answer), 200, "{answer}");

    let seen = fx.upstream.wait_for(2 * spoofs.len() + 2).await;
    for request in &seen[1..] {
        let session_headers: Vec<_> = request
            .headers
            .iter()
            .chain(&request.trailers)
            .filter(|(name, _)| name.replace('_', "-").starts_with("x-session"))
            .collect();
        let with_cookie = request.header("cookie").is_some();
        if with_cookie {
            assert_eq!(
                session_headers,
                vec![&("x-session".to_string(), genuine.clone())],
                "{}: {:?}",
                request.uri,
                request.headers
            );
        } else {
            assert!(
                session_headers
                    .iter()
                    .all(|(_, v)| !v.starts_with("00000000")),
                "{:?}",
                request.headers
            );
        }
        assert!(
            request.header("x-custom").is_none(),
            "Connection-named header forwarded"
        );
    }
    let chunked = seen.last().unwrap();
    assert_eq!(&chunked.body[..], b"hello");
}

#[tokio::test]
async fn the_reserved_prefix_is_never_forwarded_in_any_spelling() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let spellings = [
        "/__sessiongate/status",
        "//__sessiongate/status",
        "/%5F%5Fsessiongate/status",
        "/%5f%5fsessiongate/status",
        "/__SessionGate/status",
        "/__SESSIONGATE/STATUS",
        "/a/../__sessiongate/status",
        "/a/%2e%2e/__sessiongate/status",
        "/a/%2E%2E/__sessiongate/status",
        "/%2F__sessiongate/status",
        "/__sessiongate;x=1/status",
        "/.%2f__sessiongate/status",
        "/./__sessiongate/status",
        "/%255F%255Fsessiongate/status",
        "/__sessiongate%2Fstatus",
        "/__sessiongate",
        "/__sessiongate/",
        "/__sessiongate/heartbeat",
        "/__sessiongate/does-not-exist",
        "/__sessiongate/../__sessiongate/status",
        "http://gw/__sessiongate/status",
    ];
    for path in spellings {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(fx.gateway.public_addr, raw.as_bytes()).await;
        let status = status_of(&answer);
        assert!(
            status == 400 || header_of(&answer, "x-session-state").is_some(),
            "{path}: {answer}"
        );
        assert!(fx.upstream.requests().is_empty(), "{path} was forwarded");
    }
    // Backslashes are path separators for some legacy servers.
    let answer = raw_exchange(
        fx.gateway.public_addr,
        b"GET /\\__sessiongate/status HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!answer.is_empty());
    assert!(
        fx.upstream.requests().is_empty(),
        "backslash spelling was forwarded"
    );
}

/// hyper's HTTP/1 parser treats Content-Length next to Transfer-Encoding as RFC 9112
/// §6.3 says: Transfer-Encoding wins, Content-Length is dropped, and the connection
/// is closed after the response. The forwarded request is therefore unambiguous and
/// nothing can be smuggled behind it.
#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    for raw in [
        &b"POST /smuggle HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n\
            Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
            [..],
        b"POST /smuggle HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\
            Content-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
    ] {
        // No `Connection: close`: the gateway must close by itself.
        let answer = raw_exchange(fx.gateway.public_addr, raw).await;
        assert_eq!(status_of(&answer), 200, "{answer}");
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "one response: {answer}"
        );
    }
    let seen = fx.upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for request in &seen {
        assert_eq!(request.uri, "/smuggle");
        assert!(request.header("content-length").is_none());
        assert!(request.body.is_empty());
    }
}

#[tokio::test]
async fn trace_and_connect_are_refused() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    for raw in [
        &b"TRACE / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"[..],
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw_exchange(fx.gateway.public_addr, raw).await;
        assert_eq!(status_of(&answer), 405, "{answer}");
    }
    assert!(fx.upstream.requests().is_empty());
}

#[tokio::test]
async fn garbage_and_oversized_heads_get_errors_not_panics() {
    let fx = Fixture::start(SessionMode::Tab, |c| c.listen.max_header_bytes = 8192).await;
    let junk = raw_exchange(fx.gateway.public_addr, b"\x00\x01\x02 nonsense\r\n\r\n").await;
    assert!(junk.is_empty() || status_of(&junk) == 400, "{junk}");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: gw\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let answer = raw_exchange(fx.gateway.public_addr, huge.as_bytes()).await;
    assert!(answer.is_empty() || status_of(&answer) == 431, "{answer}");
    // The gateway still works.
    assert_eq!(reqwest::get(fx.url("/")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn silent_and_slow_connections_are_closed_after_header_timeout() {
    let fx = Fixture::start(SessionMode::Tab, |c| {
        c.listen.header_timeout = CfgDuration::from_millis(400);
    })
    .await;
    for partial in [
        &b""[..],
        b"GET / HTTP/1.1\r\nHost: gw\r\n",
        b"PRI * HTTP/2.0\r\n",
    ] {
        let mut stream = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
        stream.write_all(partial).await.unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "{partial:?}: still open after 3 s");
        assert!(started.elapsed() < Duration::from_secs(2), "{partial:?}");
    }
    assert!(fx.upstream.requests().is_empty());
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let fx = Fixture::start(SessionMode::Tab, |c| {
        c.listen.idle_timeout = CfgDuration::from_millis(400);
    })
    .await;
    let mut stream = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection still open");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// HTTP/2 keep-alive pings move bytes; they must not keep an unused connection open.
#[tokio::test]
async fn idle_http2_connections_are_closed_despite_pings() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let fx = Fixture::start(SessionMode::Tab, |c| {
        c.listen.idle_timeout = CfgDuration::from_millis(400);
    })
    .await;
    let stream = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(fx.url("/"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(3), connection).await;
    assert!(closed.is_ok(), "idle h2 connection still open after 3 s");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// Random bytes, and random mutations of a valid request, never take the gateway down.
#[tokio::test]
async fn random_input_gets_an_answer_or_a_close_never_a_crash() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.listen.header_timeout = CfgDuration::from_millis(500);
    })
    .await;
    let valid = b"POST /a?b=c HTTP/1.1\r\nHost: gw\r\nCookie: sg_session=x\r\n\
                  X-Session-Token: y\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
    // A small deterministic generator: the same inputs every run.
    let mut seed: u64 = 0x5eed_1e55_c0ff_ee00;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..60 {
        let input: Vec<u8> = if round % 2 == 0 {
            (0..(next() % 600)).map(|_| next() as u8).collect()
        } else {
            let mut mutated = valid.to_vec();
            for _ in 0..(1 + next() % 6) {
                let at = (next() as usize) % mutated.len();
                mutated[at] = next() as u8;
            }
            mutated
        };
        let answer = raw_exchange(fx.gateway.public_addr, &input).await;
        if !answer.is_empty() {
            let status = status_of(&answer);
            assert!((100..600).contains(&status), "round {round}: {answer}");
        }
    }
    assert_eq!(
        reqwest::get(fx.url("/still-up")).await.unwrap().status(),
        200
    );
}

/// The header names of a recorded request (headers and trailers) that a backend
/// folding `_` to `-` would read as `name`, with their values.
fn spellings_of(request: &crate::common::upstream::Recorded, name: &str) -> Vec<(String, String)> {
    request
        .headers
        .iter()
        .chain(&request.trailers)
        .filter(|(n, _)| n.replace('_', "-") == name)
        .cloned()
        .collect()
}

/// `upstream.header` may lie outside the `X-Session*` namespace; every spelling of it
/// is stripped before the real one is added, so a backend that folds `_` to `-` never
/// reads a forged handle next to (or instead of) the gateway's.
#[tokio::test]
async fn a_configured_session_header_cannot_be_forged_over_http1() {
    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.upstream.header = "X-App-Session".to_string();
    })
    .await;
    let cookies = session_cookies(&fx).await;
    let genuine = fx.upstream.wait_for(1).await[0]
        .header("x-app-session")
        .expect("the handle travels in the configured header");

    let forgeries = [
        "X_App_Session: victim-1\r\n",
        "x-app-session: victim-2\r\n",
        "X-APP_SESSION: victim-3\r\n",
        "x_app-session: victim-4\r\nX_APP_SESSION: victim-5\r\n",
    ];
    for forged in forgeries {
        for cookie in [Some(cookies.as_str()), None] {
            let cookie_line = cookie
                .map(|c| format!("Cookie: {c}\r\n"))
                .unwrap_or_default();
            let raw = format!(
                "GET /forged HTTP/1.1\r\nHost: gw\r\n{cookie_line}{forged}Connection: close\r\n\r\n"
            );
            let answer = raw_exchange(fx.gateway.public_addr, raw.as_bytes()).await;
            assert_eq!(status_of(&answer), 200, "{forged}: {answer}");
        }
    }
    // And as trailers of a chunked body.
    let raw = format!(
        "POST /forged HTTP/1.1\r\nHost: gw\r\nCookie: {cookies}\r\nTransfer-Encoding: chunked\r\n\
         Trailer: X_App_Session\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\
         X_App_Session: victim-6\r\nx-app-session: victim-7\r\n\r\n"
    );
    let answer = raw_exchange(fx.gateway.public_addr, raw.as_bytes()).await;
    assert_eq!(status_of(&answer), 200, "{answer}");

    let seen = fx.upstream.wait_for(2 * forgeries.len() + 2).await;
    for request in &seen[1..] {
        let spellings = spellings_of(request, "x-app-session");
        assert_eq!(spellings.len(), 1, "{}: {spellings:?}", request.uri);
        let (name, value) = &spellings[0];
        assert_eq!(name, "x-app-session");
        assert!(
            !value.starts_with("victim"),
            "forged handle forwarded: {value}"
        );
        if request.header("cookie").is_some() || request.method == "POST" {
            assert_eq!(value, &genuine);
        }
    }
    assert_eq!(&seen.last().unwrap().body[..], b"hello");
}

/// The same over HTTP/2, where a header name may be sent in any spelling hyper
/// accepts and trailers travel as a frame of their own.
#[tokio::test]
async fn a_configured_session_header_cannot_be_forged_over_http2() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let fx = Fixture::start(SessionMode::Browser, |c| {
        c.upstream.header = "X-App-Session".to_string();
    })
    .await;
    let cookies = session_cookies(&fx).await;
    let genuine = fx.upstream.wait_for(1).await[0]
        .header("x-app-session")
        .unwrap();

    let stream = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);

    let get = http::Request::get(fx.url("/forged-h2"))
        .header("cookie", cookies.as_str())
        .header("x_app_session", "victim-1")
        .header("x-app-session", "victim-2")
        .body(Empty::<Bytes>::new().boxed())
        .unwrap();
    let response = sender.send_request(get).await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await;

    let mut trailers = http::HeaderMap::new();
    trailers.insert("x_app_session", "victim-3".parse().unwrap());
    trailers.insert("x-app-session", "victim-4".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"hello"))),
        Ok(Frame::trailers(trailers)),
    ];
    let post = http::Request::post(fx.url("/forged-h2"))
        .header("cookie", cookies.as_str())
        .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .unwrap();
    let response = sender.send_request(post).await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await;

    let seen = fx.upstream.wait_for(3).await;
    for request in &seen[1..] {
        let spellings = spellings_of(request, "x-app-session");
        assert_eq!(
            spellings,
            vec![("x-app-session".to_string(), genuine.clone())],
            "{} {}",
            request.method,
            request.uri
        );
    }
    assert_eq!(&seen[2].body[..], b"hello");
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, and any request with two or an
/// invalid one, gets 400 and reaches nothing.
#[tokio::test]
async fn http1_requests_need_exactly_one_valid_host() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    for raw in [
        &b"GET /no-host HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET /two-hosts HTTP/1.1\r\nHost: gw\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        b"GET /two-hosts HTTP/1.0\r\nHost: gw\r\nHost: evil.example\r\n\r\n",
        b"GET /userinfo HTTP/1.1\r\nHost: user@evil.example\r\nConnection: close\r\n\r\n",
        b"GET /junk HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
        b"GET /__sessiongate/status HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw_exchange(fx.gateway.public_addr, raw).await;
        assert_eq!(
            status_of(&answer),
            400,
            "{}: {answer}",
            String::from_utf8_lossy(raw)
        );
    }
    assert!(
        fx.upstream.requests().is_empty(),
        "{:?}",
        fx.upstream.requests()
    );
    // HTTP/1.0 predates Host: without one the upstream's own authority is used.
    let answer = raw_exchange(fx.gateway.public_addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = fx.upstream.wait_for(1).await;
    assert_eq!(seen[0].header("host"), Some(fx.upstream.addr.to_string()));
}

/// RFC 9112 §3.2.2: with an absolute-form target the authority in it is the host, and
/// the `Host` header is ignored — for the upstream and for `X-Forwarded-Host`.
#[tokio::test]
async fn an_absolute_form_authority_wins_over_host() {
    let fx = Fixture::start(SessionMode::Tab, |_| {}).await;
    let answer = raw_exchange(
        fx.gateway.public_addr,
        b"GET http://app.example:8080/absolute?x=1 HTTP/1.1\r\nHost: evil.example\r\n\
          Connection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = fx.upstream.wait_for(1).await;
    assert_eq!(seen[0].uri, "/absolute?x=1");
    assert_eq!(seen[0].header_all("host"), vec!["app.example:8080"]);
    assert_eq!(
        seen[0].header_all("x-forwarded-host"),
        vec!["app.example:8080"]
    );
}
