//! A scripted raw-TCP upstream: it reads each request head the gateway sends and
//! answers with exact bytes, however wrong (both `Content-Length` and chunked, a
//! truncated body, a `101` nobody asked for). hyper could not be made to send those.
//!
//! It records every request head and counts how many of its connections the gateway
//! closed, so a test can show that a connection which carried a bad answer is never
//! used again.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the upstream does after writing an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Keep the connection and wait for the next request (or the gateway's close).
    KeepOpen,
    /// Close the connection (a truncated body ends this way).
    Close,
}

/// The bytes to answer a request head with, and what to do next.
pub type Script = dyn Fn(&str) -> (Vec<u8>, Then) + Send + Sync;

/// A running scripted upstream.
pub struct Scripted {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    closed_by_gateway: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Scripted {
    /// Binds 127.0.0.1 on an ephemeral port; `script` answers each request head.
    pub async fn start(
        script: impl Fn(&str) -> (Vec<u8>, Then) + Send + Sync + 'static,
    ) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let closed_by_gateway = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let script: Arc<Script> = Arc::new(script);
        {
            let (heads, closed, stop) = (
                Arc::clone(&heads),
                Arc::clone(&closed_by_gateway),
                stop.clone(),
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
                    let (heads, closed, script, stop) = (
                        Arc::clone(&heads),
                        Arc::clone(&closed),
                        Arc::clone(&script),
                        stop.clone(),
                    );
                    tokio::spawn(async move {
                        tokio::select! {
                            () = serve(stream, &heads, &closed, &*script) => {}
                            () = stop.cancelled() => {}
                        }
                    });
                }
            });
        }
        Scripted {
            addr,
            heads,
            closed_by_gateway,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request head received so far, oldest first.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// How many connections the gateway closed after at least one answer.
    pub fn closed_by_gateway(&self) -> usize {
        self.closed_by_gateway.load(Ordering::SeqCst)
    }

    /// Waits (up to 5 s) until the gateway has closed `n` connections.
    pub async fn wait_closed(&self, n: usize) -> bool {
        super::eventually(|| self.closed_by_gateway() >= n).await
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    mut stream: TcpStream,
    heads: &Mutex<Vec<String>>,
    closed: &AtomicUsize,
    script: &Script,
) {
    let mut buffer = Vec::new();
    let mut answered = 0usize;
    loop {
        let head = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = buffer.drain(..end + 4).collect();
                break String::from_utf8_lossy(&head).into_owned();
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    if answered > 0 {
                        closed.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        heads.lock().unwrap().push(head.clone());
        let (bytes, then) = script(&head);
        if stream.write_all(&bytes).await.is_err() {
            return;
        }
        let _ = stream.flush().await;
        answered += 1;
        if then == Then::Close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// The value of header `name` in a raw request head (case-insensitive).
pub fn head_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
