//! A recording test upstream for the gateway's integration tests.
//!
//! [`Upstream::start`] serves HTTP/1.1 and h2c (prior knowledge) on an ephemeral
//! loopback port and records every request it gets — method, path and query,
//! version, every header, the whole body and its trailers — so a test can check
//! exactly what the gateway forwarded. A few routes make it answer in useful ways:
//!
//! | route | answer |
//! |---|---|
//! | `/echo…` | 200 JSON of the recorded request |
//! | `/slow?ms=N` | 200 `slow` after N ms |
//! | `/status?code=N` | status N |
//! | `/respond?header=Name:Value&…&body=…&type=…` | 200 with those headers and body |
//! | `/stream?chunks=N&ms=M` | N chunks `chunk i\n`, M ms apart |
//! | `/upgrade` with `Upgrade:` | 101 naming the requested protocol (with the matching `Sec-WebSocket-Accept` when there is a `Sec-WebSocket-Key`), then echoes raw bytes |
//! | anything else | 200 `text/plain` `ok` |
//!
//! Query values are percent-decoded (`+` is a space). It also counts how many
//! requests it is handling at once ([`Upstream::peak_in_flight`]). Dropping the
//! [`Upstream`] stops it and closes its connections.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long [`Upstream::wait_for`] waits before giving up.
const WAIT_FOR: Duration = Duration::from_secs(5);

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as received (`/a/b?x=1`).
    pub uri: String,
    pub version: Version,
    /// Every header with a lowercase name, each repeated value separately. The
    /// order is hyper's: names in order of first appearance, each name's values
    /// in the order they arrived.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub trailers: Vec<(String, String)>,
}

impl Recorded {
    /// All values of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }

    /// The query parameter `name`, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.uri.split_once('?').map_or("", |(_, q)| q);
        query_params(query)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "method": self.method,
            "uri": self.uri,
            "version": format!("{:?}", self.version),
            "headers": self.headers,
            "body": String::from_utf8_lossy(&self.body),
            "trailers": self.trailers,
        })
    }
}

/// A running test upstream; see the module docs.
pub struct Upstream {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    load: Arc<Load>,
    stop: CancellationToken,
}

/// Requests being handled now, and the most ever handled at once.
#[derive(Default)]
struct Load {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts one request as being handled until dropped.
struct Handling(Arc<Load>);

impl Handling {
    fn start(load: &Arc<Load>) -> Handling {
        let now = load.now.fetch_add(1, Ordering::SeqCst) + 1;
        load.peak.fetch_max(now, Ordering::SeqCst);
        Handling(Arc::clone(load))
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Upstream {
    /// Binds 127.0.0.1 on an ephemeral port and starts serving.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test upstream");
        let addr = listener.local_addr().expect("test upstream address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let load = Arc::new(Load::default());
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            Arc::clone(&log),
            Arc::clone(&load),
            stop.clone(),
        ));
        Upstream {
            addr,
            log,
            load,
            stop,
        }
    }

    /// The most requests this upstream was handling at the same time (from the
    /// request head until its response head was ready).
    pub fn peak_in_flight(&self) -> usize {
        self.load.peak.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests recorded so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have been recorded and returns them all.
    /// Panics after 5 s, listing what did arrive, so a test fails with a reason.
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + WAIT_FOR;
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            if tokio::time::Instant::now() >= deadline {
                let seen: Vec<_> = requests
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.uri))
                    .collect();
                panic!(
                    "test upstream: expected {n} requests within {WAIT_FOR:?}, got {}: {seen:?}",
                    requests.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Stops the accept loop (closing the listener) and every open connection.
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    log: Arc<Mutex<Vec<Recorded>>>,
    load: Arc<Load>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Transient (e.g. out of file descriptors): pause instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let log = Arc::clone(&log);
        let load = Arc::clone(&load);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let log = Arc::clone(&log);
                let handling = Handling::start(&load);
                async move {
                    let response = handle(req, &log).await;
                    drop(handling);
                    Ok::<_, Infallible>(response)
                }
            });
            // `auto` answers HTTP/1.1, and h2c when the client starts with the
            // HTTP/2 preface; "with upgrades" keeps HTTP/1.1 `Upgrade` usable.
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            // A test server need not drain politely: stopping drops the connection.
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn handle(mut req: Request<Incoming>, log: &Mutex<Vec<Recorded>>) -> Response<TestBody> {
    // `/upgrade` accepts any `Upgrade` protocol and then echoes raw bytes back: a
    // naive backend, which only a careful gateway keeps from being tunnelled to.
    let protocol = req.headers().get("upgrade").cloned();
    let accept = req
        .headers()
        .get("sec-websocket-key")
        .map(|key| ws_accept(key.as_bytes()));
    let upgrade = (req.uri().path() == "/upgrade" && protocol.is_some())
        .then(|| hyper::upgrade::on(&mut req));
    let recorded = record(req).await;
    log.lock().unwrap().push(recorded.clone());
    if let Some(upgrade) = upgrade {
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            }
        });
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", protocol.unwrap())
            .header("connection", "upgrade");
        if let Some(accept) = accept {
            response = response.header("sec-websocket-accept", accept);
        }
        return response.body(full(Bytes::new())).unwrap();
    }

    let path = recorded.uri.split('?').next().unwrap_or("");
    let query = |name: &str| recorded.query(name);
    let number = |name: &str| query(name).and_then(|v| v.parse::<u64>().ok());

    if path.starts_with("/echo") {
        return respond(
            StatusCode::OK,
            "application/json",
            recorded.to_json().to_string(),
        );
    }
    match path {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(number("ms").unwrap_or(0))).await;
            respond(StatusCode::OK, "text/plain", "slow")
        }
        "/status" => status(number("code")),
        "/respond" => respond_with(&recorded),
        "/stream" => stream(number("chunks").unwrap_or(3), number("ms").unwrap_or(0)),
        _ => respond(StatusCode::OK, "text/plain", "ok"),
    }
}

/// `/status`: any final status; 204 and 304 with no body, as HTTP requires.
fn status(code: Option<u64>) -> Response<TestBody> {
    let status = code
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok());
    match status {
        Some(s) if s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED => {
            respond(s, "text/plain", "")
        }
        Some(s) => respond(s, "text/plain", format!("status {}", s.as_u16())),
        None => bad_request("code must be 200..=599"),
    }
}

/// Reads the whole request, frame by frame, so trailers are kept too. A body that
/// fails midway is recorded with what arrived.
async fn record(req: Request<Incoming>) -> Recorded {
    let (parts, mut body) = req.into_parts();
    let mut data = BytesMut::new();
    let mut trailers = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        match frame.into_data() {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(frame) => {
                if let Ok(map) = frame.into_trailers() {
                    trailers.extend(pairs(&map));
                }
            }
        }
    }
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.to_string(), |pq| pq.to_string());
    Recorded {
        method: parts.method.to_string(),
        uri,
        version: parts.version,
        headers: pairs(&parts.headers),
        body: data.freeze(),
        trailers,
    }
}

fn pairs(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect()
}

/// `/respond`: every `header=Name:Value` is appended (so repeats, such as several
/// `Set-Cookie`s, all arrive), `type` sets `Content-Type`, `body` the body.
fn respond_with(recorded: &Recorded) -> Response<TestBody> {
    let query = recorded.uri.split_once('?').map_or("", |(_, q)| q);
    let mut resp = respond(StatusCode::OK, "text/plain", "");
    let mut body = String::new();
    for (key, value) in query_params(query) {
        match key.as_str() {
            "body" => body = value,
            "type" => match HeaderValue::from_str(&value) {
                Ok(value) => {
                    resp.headers_mut().insert(CONTENT_TYPE, value);
                }
                Err(_) => return bad_request("bad type"),
            },
            "header" => {
                let Some((name, value)) = value.split_once(':') else {
                    return bad_request("header must be Name:Value");
                };
                let name = HeaderName::from_bytes(name.trim().as_bytes());
                let value = HeaderValue::from_str(value.trim());
                match (name, value) {
                    (Ok(name), Ok(value)) => {
                        resp.headers_mut().append(name, value);
                    }
                    _ => return bad_request("bad header"),
                }
            }
            _ => {}
        }
    }
    *resp.body_mut() = full(body);
    resp
}

/// `/stream`: chunks are produced by a task, so they really leave M ms apart.
fn stream(chunks: u64, ms: u64) -> Response<TestBody> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..chunks {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if tx.send(Bytes::from(format!("chunk {i}\n"))).await.is_err() {
                return; // the client went away
            }
        }
    });
    let mut resp = Response::new(ChannelBody { rx }.boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// A body fed by a channel; it ends when the sender is dropped. Its size is
/// unknown, so HTTP/1.1 sends it chunked.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2), computed by tungstenite
/// rather than by the gateway's own code.
pub fn ws_accept(key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
}

/// Splits a query string into percent-decoded pairs (`+` is a space).
fn query_params(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into()).boxed()
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<TestBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn bad_request(why: &'static str) -> Response<TestBody> {
    respond(StatusCode::BAD_REQUEST, "text/plain", why)
}
