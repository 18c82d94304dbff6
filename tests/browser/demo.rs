//! The bundled demo app behind the gateway in its default `tab` mode: two tabs keep
//! two independent counters, and a reload keeps each tab's own.

use std::time::Duration;

use http::HeaderName;
use sessiongate::server;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::test_config;
use crate::harness::{wait_until, Browser};

/// The visit counter on the demo's home page.
async fn visits(browser: &Browser) -> Option<u64> {
    let text = browser.text("section strong").await?;
    text.trim().parse().ok()
}

async fn wait_visits(browser: &Browser, expected: u64, context: &str) {
    wait_until(context, Duration::from_secs(10), || async {
        (visits(browser).await == Some(expected)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demo_tabs_count_separately_and_reload_keeps_each() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(sessiongate::demo::serve(
        listener,
        HeaderName::from_static("x-session"),
        stop.clone(),
    ));
    let config = test_config(&app_url);
    assert_eq!(config.session.mode, sessiongate::config::SessionMode::Tab);
    let gateway = server::start(config).await.unwrap();
    let home = format!("http://{}/", gateway.public_addr);

    let browser = Browser::launch().await;
    let tab_a = browser.current().await;
    browser.goto(&home).await;
    wait_visits(&browser, 1, "tab A, first visit").await;
    browser.reload().await;
    wait_visits(&browser, 2, "tab A, reload").await;
    let handle_a = browser.text("code.handle").await;

    let tab_b = browser.new_tab().await;
    browser.goto(&home).await;
    wait_visits(&browser, 1, "tab B has its own counter").await;
    let handle_b = browser.text("code.handle").await;
    assert_ne!(handle_a, handle_b, "two tabs, two sessions");

    browser.switch_to(&tab_a).await;
    browser.reload().await;
    wait_visits(&browser, 3, "tab A keeps counting after B").await;
    assert_eq!(browser.text("code.handle").await, handle_a);
    browser.switch_to(&tab_b).await;
    browser.reload().await;
    wait_visits(&browser, 2, "tab B keeps its own").await;
    browser.assert_no_console_errors("demo").await;

    browser.close().await;
    gateway.shutdown();
    stop.cancel();
}
