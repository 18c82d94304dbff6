//! The upstream of `bench/compare.sh`: a tiny, fast HTTP/1.1 server that answers
//! `GET /1k`, `/100k` and `/1m` with `text/html` pages of exactly 1 KiB, 100 KiB and
//! 1 MiB from memory (each with `<head>` within its first 60 bytes, then table rows up
//! to the size), and anything else with 404. It is there to cost as little as
//! possible, so that what the benchmark measures is the proxy in front of it.
//!
//! ```text
//! cargo run --release --example bench_upstream -- [ADDRESS] [THREADS]
//! ```
//!
//! `ADDRESS` defaults to `127.0.0.1:0` (a free port), `THREADS` to 1. Once it
//! listens it prints `listening on ADDRESS` on stdout.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// A page of exactly `size` bytes: a short head, then rows until it is full.
fn page(size: usize) -> Bytes {
    let head = "<!DOCTYPE html>\n<html><head><title>bench</title></head><body><table>\n";
    let tail = "</table></body></html>\n";
    let mut html = String::with_capacity(size);
    html.push_str(head);
    let mut row = 0u32;
    loop {
        let line = format!("<tr><td class=\"n\">{row}</td><td>lorem ipsum dolor</td></tr>\n");
        if html.len() + line.len() + tail.len() > size {
            break;
        }
        html.push_str(&line);
        row += 1;
    }
    while html.len() + tail.len() < size {
        html.push(' ');
    }
    html.push_str(tail);
    html.truncate(size);
    Bytes::from(html)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .map_err(|e| std::io::Error::other(format!("address: {e}")))?;
    let threads: usize = args
        .next()
        .map(|t| t.parse())
        .transpose()
        .map_err(|e| std::io::Error::other(format!("threads: {e}")))?
        .unwrap_or(1)
        .max(1);
    let pages = [
        ("/1k", page(1024)),
        ("/100k", page(100 * 1024)),
        ("/1m", page(1024 * 1024)),
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(address).await?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pages = pages.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let found = pages
                        .iter()
                        .find(|(path, _)| *path == request.uri().path())
                        .map(|(_, body)| body.clone());
                    async move {
                        let response = match found {
                            Some(body) => Response::builder()
                                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                                .body(Full::new(body)),
                            None => Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::new())),
                        };
                        Ok::<_, Infallible>(response.unwrap_or_default())
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
