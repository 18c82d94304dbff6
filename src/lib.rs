//! sessiongate: a reverse-proxy sidecar that gives an unmodified legacy web backend
//! server-side sessions — one per browser tab or per browser — handed to it as an
//! `X-Session` request header.
//!
//! The request path is a chain of stages (see [`proxy`]): accept ([`net`]) → refuse
//! → reserved endpoint ([`reserved`]) or identify ([`session`]) → forward upstream →
//! respond, HTML pages getting the browser agent's tag on the way ([`inject`],
//! [`agent`]). [`hooks`] tells the backend when sessions start, time out and end.
//! Operators watch it through [`admin`] and [`metrics`]; [`server`] wires it all
//! together from a [`config::Config`].

pub mod admin;
pub mod agent;
pub mod config;
pub mod context;
pub mod demo;
pub mod hooks;
pub mod inject;
pub mod lifetime;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod reserved;
pub mod server;
pub mod session;
pub mod web;
