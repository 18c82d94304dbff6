//! The HTTP vocabulary every layer may use: response bodies and canned answers (with
//! the deadline every request body is read under), header names and scrubbing,
//! cookies, who the client is and which scheme it used (trusted proxies and the
//! forwarded headers), the query string, Fetch Metadata, origins, the path
//! normalisation that keeps the reserved prefix from being reached under another
//! spelling, the pooled client, the WebSocket handshake checks that guard tunnels,
//! and the one type for everything the gateway refuses or fails on.
//!
//! Nothing here knows about sessions, the request path or the server: this module
//! sits just above [`crate::config`] and below everything else (see ARCHITECTURE.md).

pub mod body;
pub mod client;
pub mod fetch;
pub mod forwarded;
pub mod headers;
pub mod origin;
pub mod path;
pub mod query;
pub mod refusal;
pub mod websocket;
