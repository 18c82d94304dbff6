//! Real-browser tests: headless Chromium, driven through chromedriver, in front of a
//! small legacy app behind the real gateway (in-process, ephemeral ports).
//!
//! Needs Chromium and chromedriver: `CHROME` (default `/usr/bin/chromium`) and
//! `CHROMEDRIVER` (default `/usr/bin/chromedriver`). Run with
//! `cargo test --test browser`. Each test starts its own chromedriver, Chromium
//! profile, app and gateway, so tests run in parallel.
//!
//! - `selfcheck`: the harness itself (browser, console log, app, WebSocket echo,
//!   tabs and windows, streaming through the gateway);
//! - `tabs`: one session per tab across reloads, links and forms; `window.open`
//!   duplicates under `duplicate_tab = "new" | "share"` (DESIGN.md §3);
//! - `requests`: fetch, XHR and WebSocket carry the tab's session;
//! - `lifetime`: countdown, "Stay", timeout and abandon (DESIGN.md §4);
//! - `pages`: injection under CSP, into gzip and head-less pages, and a streamed
//!   5 MiB page;
//! - `browser_mode`: one session per browser profile, countdown in every tab;
//! - `php`: a real PHP app (`php -S`, Debian's `php-cli`) behind the cookie jar:
//!   one PHP session per tab with it, one shared by all tabs without it;
//! - `replicas`: two gateways on one `redis-server` behind a round-robin proxy: one
//!   session per tab across replicas (real processes), through a replica killed
//!   with SIGKILL, hooks once;
//! - `page_truth`: documents only, the countdown's language and texts, an ended
//!   tab keeps its form, EventSource reconnects, shadow-root forms, no token in the
//!   DOM.
//!
//! Every scenario asserts that the browser logged no console errors.

#[path = "../common/mod.rs"]
mod common;

mod app;
mod fixture;
mod harness;

mod browser_mode;
mod demo;
mod lifetime;
mod page_truth;
mod pages;
mod php;
mod replicas;
mod requests;
mod selfcheck;
mod tabs;
