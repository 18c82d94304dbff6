//! `tab` mode identity (DESIGN.md §3, PROTOCOL.md): one session per tab, kept across
//! reload, link clicks and form submits; a `window.open` duplicate forks or shares.

use sessiongate::config::{DuplicateTab, SessionMode};

use crate::app::{self, POST_FIELD, POST_NOTES};
use crate::fixture::Gate;
use crate::harness::{assert_clean, Browser};

/// Two tabs get two sessions; reload, a link, a GET form and a POST form (body
/// intact) keep each tab's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tab_keeps_its_own_session_across_reload_links_and_forms() {
    let gate = Gate::start(SessionMode::Tab, |_| {}).await;
    let browser = Browser::launch().await;

    // Tab A: first contact mints a session.
    let tab_a = browser.current().await;
    browser.goto(&gate.url("/page")).await;
    let (a, page) = browser.wait_handle(None, "tab A, first visit").await;
    browser.wait_agent("tab A").await;
    assert_clean(&page, "tab A, first visit");
    assert_eq!(gate.session_state(&a), Some("active"));

    // Tab B: a new tab bootstraps a new session.
    let tab_b = browser.new_tab().await;
    browser.goto(&gate.url("/page")).await;
    let (b, page) = browser.wait_handle(None, "tab B, first visit").await;
    assert_clean(&page, "tab B, first visit");
    assert_ne!(a, b, "a new tab must get its own session");
    browser.assert_no_console_errors("first visits").await;

    // Tab A: reload.
    browser.switch_to(&tab_a).await;
    let before = browser.wait_app_page(None).await;
    browser.reload().await;
    let (handle, page) = browser.wait_handle(before.seq, "tab A, reload").await;
    assert_eq!(handle, a, "reload keeps the tab's session");
    assert_clean(&page, "tab A, reload");

    // Tab A: a link.
    browser.click("#link").await;
    let (handle, page) = browser.wait_handle(page.seq, "tab A, link").await;
    assert_eq!(handle, a, "a link click keeps the tab's session");
    assert_eq!(page.path.as_deref(), Some("/page?via=link"));
    assert_clean(&page, "tab A, link");

    // Tab A: a GET form.
    browser.click("#getsubmit").await;
    let (handle, page) = browser.wait_handle(page.seq, "tab A, GET form").await;
    assert_eq!(handle, a, "a GET form keeps the tab's session");
    assert_eq!(
        page.path.as_deref(),
        Some("/page?q=hello+world&via=getform")
    );
    assert_clean(&page, "tab A, GET form");

    // Tab A: a POST form; the body arrives exactly as the browser sent it.
    browser.click("#postsubmit").await;
    let (handle, page) = browser.wait_handle(page.seq, "tab A, POST form").await;
    assert_eq!(handle, a, "a POST form keeps the tab's session");
    assert_eq!(page.method.as_deref(), Some("POST"));
    assert_eq!(page.path.as_deref(), Some("/submit"));
    assert_eq!(browser.text("#posted").await.as_deref(), Some(POST_FIELD));
    let hit = gate.app.hit(page.seq.unwrap());
    assert_eq!(
        app::form_pairs(&hit.body),
        [
            ("field".to_string(), POST_FIELD.to_string()),
            ("notes".to_string(), POST_NOTES.to_string())
        ],
        "POST body: {:?}",
        String::from_utf8_lossy(&hit.body)
    );
    assert_clean(&page, "tab A, POST form");

    // Tab B still has its own.
    browser.switch_to(&tab_b).await;
    let before = browser.wait_app_page(None).await;
    browser.reload().await;
    let (handle, page) = browser.wait_handle(before.seq, "tab B, reload").await;
    assert_eq!(handle, b, "tab B keeps its session");
    browser.click("#link").await;
    let (handle, _) = browser.wait_handle(page.seq, "tab B, link").await;
    assert_eq!(handle, b, "tab B keeps its session on a link");

    // Only what the tabs asked for reached the app: never a __sg parameter.
    for hit in gate.app.hits() {
        assert!(!hit.uri.contains("__sg"), "forwarded {}", hit.uri);
    }
    browser
        .assert_no_console_errors("reload, link and forms")
        .await;
    browser.close().await;
}

/// Opens the main page in a fresh tab, then `window.open`s the same page from it
/// (with opener: the new window gets a copy of the tab's sessionStorage). Returns
/// the opener's handle and leaves the browser on the new window's loaded page.
async fn open_duplicate(gate: &Gate, browser: &Browser) -> (String, crate::harness::PageInfo) {
    let opener_window = browser.current().await;
    browser.goto(&gate.url("/page")).await;
    let (opener, _) = browser.wait_handle(None, "opener").await;
    browser.wait_agent("opener").await;
    browser.click("#open-same").await;
    let popup = browser.wait_new_window(&[opener_window]).await;
    browser.switch_to(&popup).await;
    let (_, page) = browser.wait_handle(None, "window.open duplicate").await;
    browser.wait_agent("window.open duplicate").await;
    assert_clean(&page, "window.open duplicate");
    (opener, page)
}

/// `duplicate_tab = "new"`: the duplicate gets a new session, and the upstream
/// sees `X-Session-Parent` (the opener's handle) on its first request only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_open_duplicate_forks_a_new_session_under_duplicate_tab_new() {
    let gate = Gate::start(SessionMode::Tab, |c| {
        c.session.duplicate_tab = DuplicateTab::New;
    })
    .await;
    let browser = Browser::launch().await;
    let opener_window = browser.current().await;
    let (opener, page) = open_duplicate(&gate, &browser).await;
    let fork = page.handle.clone().unwrap();
    assert_ne!(fork, opener, "the duplicate must get its own session");
    assert_eq!(
        page.parent.as_deref(),
        Some(opener.as_str()),
        "the fork's first request carries X-Session-Parent = the opener's handle"
    );
    let hit = gate.app.hit(page.seq.unwrap());
    assert_eq!(hit.session.as_deref(), Some(fork.as_str()));
    assert_eq!(hit.parent.as_deref(), Some(opener.as_str()));
    assert_eq!(gate.session_state(&fork), Some("active"));
    assert_eq!(gate.session_state(&opener), Some("active"));

    // The fork is the duplicate's own from now on, without the parent header.
    browser.reload().await;
    let (handle, again) = browser.wait_handle(page.seq, "duplicate, reload").await;
    assert_eq!(handle, fork, "the duplicate keeps its forked session");
    assert_eq!(
        again.parent.as_deref(),
        Some(""),
        "X-Session-Parent only once"
    );

    // The opener kept its session.
    browser.switch_to(&opener_window).await;
    let before = browser.wait_app_page(None).await;
    browser.reload().await;
    let (handle, _) = browser.wait_handle(before.seq, "opener, reload").await;
    assert_eq!(handle, opener, "the opener keeps its session");
    browser
        .assert_no_console_errors("duplicate_tab = new")
        .await;
    browser.close().await;
}

/// `duplicate_tab = "share"`: the duplicate resumes the opener's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_open_duplicate_shares_the_session_under_duplicate_tab_share() {
    let gate = Gate::start(SessionMode::Tab, |c| {
        c.session.duplicate_tab = DuplicateTab::Share;
    })
    .await;
    let browser = Browser::launch().await;
    let (opener, page) = open_duplicate(&gate, &browser).await;
    assert_eq!(
        page.handle.as_deref(),
        Some(opener.as_str()),
        "the duplicate shares the opener's session"
    );
    assert_eq!(page.parent.as_deref(), Some(""), "no X-Session-Parent");
    browser
        .assert_no_console_errors("duplicate_tab = share")
        .await;
    browser.close().await;
}
