//! A scripted faulty upstream: a loopback listener whose behaviour is chosen per
//! request (by connection and by request on that connection), for the upstream-fault
//! tests. Besides answering with exact bytes it can stay silent, trickle an answer
//! byte by byte (head and all, or the body only), reset the connection (`SO_LINGER` 0) after part of an answer, close a
//! kept-alive connection when it is reused, and answer before reading the request
//! body. [`closed_port`] and [`Blackhole`] stand for an upstream that refuses, and one
//! whose connect never completes (a listener whose accept queue is full: Linux drops
//! the SYN, deterministically, on loopback).
//!
//! Every request it reads is recorded (connection number, number on the connection,
//! head, body), and it counts the connections it accepted and those the gateway
//! closed, so a test can tell a fresh connection from a reused one.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the upstream does with one request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Reads the request, writes these bytes, keeps the connection for the next.
    Answer(Vec<u8>),
    /// Reads the request, writes these bytes, closes (FIN).
    AnswerClose(Vec<u8>),
    /// Reads the request and never answers; the connection stays open.
    Silent,
    /// Reads the request, writes these bytes one at a time with a pause before each,
    /// then keeps the connection.
    Trickle(Vec<u8>, Duration),
    /// Reads the request, writes `head` at once, then `body` one byte at a time with
    /// a pause before each, then keeps the connection.
    Drip {
        head: Vec<u8>,
        body: Vec<u8>,
        pause: Duration,
    },
    /// Reads the request, writes these bytes, then resets the connection (RST).
    ResetAfter(Vec<u8>),
    /// Reads the request and closes the connection without a byte (what a server
    /// whose keep-alive timer fires as the request arrives does).
    CloseUnanswered,
    /// Writes these bytes as soon as the request head is in, without reading the
    /// body, then closes.
    Early(Vec<u8>),
    /// Writes these bytes as soon as the request head is in and keeps the connection
    /// (reading and dropping whatever comes) until the gateway closes it.
    EarlyOpen(Vec<u8>),
}

/// One request the upstream read.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The connection it came on (0 for the first accepted).
    pub conn: usize,
    /// Its place on that connection (0 for the first).
    pub nth: usize,
    pub head: String,
    /// The body as read (empty for [`Fault::Early`], which does not read it).
    pub body: Vec<u8>,
}

impl Seen {
    /// The request target (`GET /x HTTP/1.1` → `/x`).
    pub fn target(&self) -> &str {
        self.head.split_whitespace().nth(1).unwrap_or("")
    }

    pub fn method(&self) -> &str {
        self.head.split_whitespace().next().unwrap_or("")
    }

    /// A header of the head (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        super::scripted::head_header(&self.head, name)
    }
}

/// Chooses the behaviour for a request, from its connection, place and head.
pub type Script = dyn Fn(&Seen) -> Fault + Send + Sync;

/// A running faulty upstream.
pub struct Faulty {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<AtomicUsize>,
    closed_by_gateway: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Faulty {
    /// Binds 127.0.0.1 on an ephemeral port; `script` picks each request's fate.
    pub async fn start(script: impl Fn(&Seen) -> Fault + Send + Sync + 'static) -> Faulty {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Faulty {
            addr,
            seen: Arc::default(),
            accepted: Arc::default(),
            closed_by_gateway: Arc::default(),
            stop: CancellationToken::new(),
        };
        let script: Arc<Script> = Arc::new(script);
        let (seen, accepted, closed, stop) = (
            Arc::clone(&upstream.seen),
            Arc::clone(&upstream.accepted),
            Arc::clone(&upstream.closed_by_gateway),
            upstream.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let conn = accepted.fetch_add(1, Ordering::SeqCst);
                let (seen, closed, script, stop) = (
                    Arc::clone(&seen),
                    Arc::clone(&closed),
                    Arc::clone(&script),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    tokio::select! {
                        () = serve(stream, conn, &seen, &closed, &*script) => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        upstream
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request read so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests read so far whose target starts with `prefix`.
    pub fn seen_at(&self, prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|seen| seen.target().starts_with(prefix))
            .collect()
    }

    /// How many connections the gateway opened.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// How many connections the gateway closed (the upstream read EOF or an error).
    pub fn closed_by_gateway(&self) -> usize {
        self.closed_by_gateway.load(Ordering::SeqCst)
    }

    /// Waits (up to 5 s) until the gateway has closed `n` connections.
    pub async fn wait_closed(&self, n: usize) -> bool {
        super::eventually(|| self.closed_by_gateway() >= n).await
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The URL of a loopback port nothing listens on: connecting is refused at once.
pub async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A loopback listener that never accepts and whose accept queue is full: a connect
/// to it never completes (the kernel drops the SYN), like a blackholed address.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl Blackhole {
    pub async fn start() -> Blackhole {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        // A backlog of 0 still queues one connection; fill the queue until a connect
        // hangs.
        let listener = socket.listen(0).unwrap();
        let mut queued = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => queued.push(stream),
                Ok(Err(error)) => panic!("blackhole: connect failed: {error}"),
                Err(_) => break,
            }
            assert!(queued.len() < 16, "blackhole: the accept queue never fills");
        }
        Blackhole {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn serve(
    mut stream: TcpStream,
    conn: usize,
    seen: &Mutex<Vec<Seen>>,
    closed: &AtomicUsize,
    script: &Script,
) {
    let mut buffer = Vec::new();
    let mut nth = 0usize;
    loop {
        let head = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = buffer.drain(..end + 4).collect();
                break String::from_utf8_lossy(&head).into_owned();
            }
            if read_more(&mut stream, &mut buffer).await == 0 {
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        };
        let mut request = Seen {
            conn,
            nth,
            head,
            body: Vec::new(),
        };
        nth += 1;
        let fault = script(&request);
        if let Fault::EarlyOpen(bytes) = &fault {
            seen.lock().unwrap().push(request);
            let _ = stream.write_all(bytes).await;
            let _ = stream.flush().await;
            let mut sink = [0u8; 8192];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            closed.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if let Fault::Early(bytes) = &fault {
            seen.lock().unwrap().push(request);
            let _ = stream.write_all(bytes).await;
            let _ = stream.flush().await;
            // Closing with the body unread resets the connection, as a real server's
            // close does.
            return;
        }
        match read_body(&mut stream, &mut buffer, &request.head).await {
            Some(body) => request.body = body,
            None => {
                seen.lock().unwrap().push(request);
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
        seen.lock().unwrap().push(request);
        match fault {
            Fault::Answer(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Fault::AnswerClose(bytes) => {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
                return;
            }
            Fault::Silent => {
                // Keep the connection until the gateway gives up on it.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Fault::Trickle(bytes, pause) => {
                for byte in bytes {
                    tokio::time::sleep(pause).await;
                    if stream.write_all(&[byte]).await.is_err() {
                        return;
                    }
                }
            }
            Fault::Drip { head, body, pause } => {
                if stream.write_all(&head).await.is_err() {
                    return;
                }
                for byte in body {
                    tokio::time::sleep(pause).await;
                    if stream.write_all(&[byte]).await.is_err() {
                        return;
                    }
                }
            }
            Fault::ResetAfter(bytes) => {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.flush().await;
                // Give the bytes time to leave before the RST overtakes them.
                tokio::time::sleep(Duration::from_millis(50)).await;
                reset(stream);
                return;
            }
            Fault::CloseUnanswered => {
                let _ = stream.shutdown().await;
                return;
            }
            Fault::Early(_) | Fault::EarlyOpen(_) => unreachable!("answered above"),
        }
        let _ = stream.flush().await;
    }
}

/// Reads what is there into `buffer`; 0 at EOF or on an error.
async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            n
        }
        Err(_) => 0,
    }
}

/// The request body after `head` (`Content-Length` or chunked, crudely: up to the
/// last-chunk marker); `None` if the connection ended first.
async fn read_body(stream: &mut TcpStream, buffer: &mut Vec<u8>, head: &str) -> Option<Vec<u8>> {
    let chunked = super::scripted::head_header(head, "transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
    if chunked {
        loop {
            if let Some(end) = buffer.windows(5).position(|w| w == b"0\r\n\r\n") {
                return Some(buffer.drain(..end + 5).collect());
            }
            if read_more(stream, buffer).await == 0 {
                return None;
            }
        }
    }
    let length: usize = super::scripted::head_header(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buffer.len() < length {
        if read_more(stream, buffer).await == 0 {
            return None;
        }
    }
    Some(buffer.drain(..length).collect())
}

/// Closes `stream` with an RST instead of a FIN (`SO_LINGER` 0).
fn reset(stream: TcpStream) {
    stream.set_zero_linger().unwrap();
    drop(stream);
}

/// A complete `200` answer with `body` (keep-alive).
pub fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A complete `200` HTML page with `body` (keep-alive): the agent goes into it on a
/// page load, and in `tab` mode hands the tab its token there.
pub fn page(body: &str) -> Vec<u8> {
    let html = format!(
        "<!doctype html><html><head><title>{body}</title></head><body>{body}</body></html>"
    );
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\r\n{html}",
        html.len()
    )
    .into_bytes()
}
