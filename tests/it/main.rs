//! Integration tests: a real recording upstream and the real gateway on ephemeral
//! loopback ports, talking HTTP over sockets.

#[path = "../common/mod.rs"]
mod common;

mod abuse;
mod admin;
mod adversarial;
mod backpressure;
mod bodies;
mod cli;
mod documents;
mod ended;
mod faults;
mod forwarding;
mod framing;
mod hooks;
mod identity;
mod jar;
mod limits;
mod ops;
mod persist;
mod redis;
mod reserved;
mod responses;
mod restart;
mod tab;
mod tls;
mod transitions;
mod trust;
mod tunnels;
mod upgrade;
