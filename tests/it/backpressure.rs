//! Slow and stalled readers: backpressure from the client socket reaches the upstream
//! read, so a client that does not read holds a bounded amount of the gateway's memory
//! (`web::body::STREAM_BUFFER` per direction), not the response.
//!
//! The upstream is a raw socket server that writes one shared 8 MiB body (no copy per
//! connection) and counts how much of it each connection managed to hand to the kernel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sessiongate::config::SessionMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{gateway_for, status_of};

/// The body of the RSS bench.
const BODY: usize = 8 * 1024 * 1024;

/// An upstream answering every request with a `size`-byte body, written as one
/// shared 64 KiB slice again and again; `written` is the total it got into its
/// sockets.
async fn big_upstream(size: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let slice: Arc<[u8]> = vec![b'x'; 64 * 1024].into();
    let written = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&written);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (slice, counter) = (Arc::clone(&slice), Arc::clone(&counter));
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
                );
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let mut left = size;
                while left > 0 {
                    let n = left.min(slice.len());
                    if stream.write_all(&slice[..n]).await.is_err() {
                        return;
                    }
                    counter.fetch_add(n, Ordering::Relaxed);
                    left -= n;
                }
            });
        }
    });
    (url, written)
}

/// A client that sends its request, reads the response head and then stops reading,
/// with a small receive buffer so the kernel holds little on its side.
async fn stalled_client(addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut head))
        .await
        .expect("a response in time")
        .unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&head)), 200);
    stream
}

fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A stalled reader stops the upstream: of a 256 MiB body, only what fits in the
/// sockets' kernel buffers (tens of MiB at most with Linux autotuning) and the
/// gateway's bounded buffers leaves the upstream — the gateway does not soak it up.
#[tokio::test]
async fn a_stalled_reader_stops_the_upstream() {
    let size = 256 * 1024 * 1024;
    let (url, written) = big_upstream(size).await;
    let gateway = gateway_for(&url, SessionMode::Tab, |_| {}).await;
    let _client = stalled_client(gateway.public_addr).await;
    // Let the pipeline fill up and settle.
    let mut last = usize::MAX;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = written.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let sent = written.load(Ordering::Relaxed);
    assert!(
        sent < size / 4,
        "the upstream wrote {sent} of {size} bytes to a client that reads nothing"
    );
}

/// The bench behind the documented per-connection bound: a few hundred clients that
/// never read an 8 MiB answer; prints the process's RSS growth per connection (the
/// upstream here is in the same process but shares one body, so the growth is the
/// gateway's buffers). Run with
/// `cargo test --release --test it stalled_readers_rss -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn stalled_readers_rss() {
    let clients: usize = std::env::var("CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let (url, written) = big_upstream(BODY).await;
    let gateway = gateway_for(&url, SessionMode::Tab, |c| {
        c.listen.idle_timeout = sessiongate::config::Duration::from_secs(600);
    })
    .await;
    // Warm up allocator and pools with one connection, then measure.
    drop(stalled_client(gateway.public_addr).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = vm_rss_kib().unwrap_or(0);
    let mut held = Vec::new();
    for _ in 0..clients {
        held.push(stalled_client(gateway.public_addr).await);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = vm_rss_kib().unwrap_or(0);
    let sent = written.load(Ordering::Relaxed);
    println!(
        "clients={clients} rss_before={before} KiB rss_after={after} KiB per_connection={:.1} KiB upstream_sent_per_connection={} KiB",
        (after.saturating_sub(before)) as f64 / clients as f64,
        sent / clients / 1024
    );
    assert!(after.saturating_sub(before) / clients as u64 <= 256);
}
