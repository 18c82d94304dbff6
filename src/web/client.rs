//! The pooled HTTP/1.1 client the gateway reaches its upstream with, for proxied
//! requests and hook calls alike.
//!
//! hyper-util's client has no connect timeout and no pool timers by default; a proxy
//! without them hangs with its upstream, and an idle pool without a timer never
//! shrinks. Every client the gateway builds comes from [`pooled`], so both are always
//! wired. Each user builds its own pool, so hook calls never queue behind, or starve,
//! proxied requests.

use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A pooled `http://` client: connect timeout, `TCP_NODELAY`, pool and protocol
/// timers, and at most `max_idle_per_host` idle connections (0: every request on a
/// new connection, closed after it).
pub fn pooled<B>(connect_timeout: Duration, max_idle_per_host: usize) -> Client<HttpConnector, B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(max_idle_per_host)
        // A request never written because its pooled connection turned out closed is
        // sent again on another (hyper-util's default, made explicit): nothing of it
        // reached the upstream, so this is safe for any method. Requests that were
        // written are never retried here; `proxy::forward` decides those.
        .retry_canceled_requests(true)
        // Bounds the read buffer (hyper's default grows to ~400 KiB), and so what a
        // stalled client's response can hold on the upstream side.
        .http1_max_buf_size(crate::web::body::STREAM_BUFFER)
        .build(connector)
}

/// An error and its causes on one line (hyper-util's own message is only "client
/// error (Connect)"). A cause that a message already ends with (`"...: {source}"`
/// and `source()` both) is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
