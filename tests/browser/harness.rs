//! The browser side of the suite: one chromedriver (and through it one headless
//! Chromium with a fresh profile) per test, and small helpers around fantoccini.
//!
//! Binaries: `CHROME` (default `/usr/bin/chromium`) and `CHROMEDRIVER` (default
//! `/usr/bin/chromedriver`). A missing binary fails the test with a message that says
//! so; the suite never skips.
//!
//! chromedriver runs in its own process group, so dropping the [`Browser`] (also on a
//! failed assertion) kills chromedriver and every Chromium process it started.

use std::fs::File;
use std::future::Future;
use std::net::TcpListener as StdListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::actions::{
    InputSource, KeyAction, KeyActions, MouseActions, PointerAction, MOUSE_BUTTON_LEFT,
};
use fantoccini::error::CmdError;
use fantoccini::key::Key;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand, WindowHandle};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value as Json};
use tempfile::TempDir;
use tokio::time::Instant;

/// How long the `wait_*` helpers poll before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);
/// Pause between two polls.
const POLL: Duration = Duration::from_millis(50);

const DEFAULT_CHROME: &str = "/usr/bin/chromium";
const DEFAULT_CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Flags for headless Chromium as root on a machine with no network.
const CHROME_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

/// Polls `probe` until it yields a value; panics after `timeout` naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The binary named by `var`, or `default`; panics if it is not there.
fn binary(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    let (program, package) = if var == "CHROME" {
        ("Chromium", "chromium")
    } else {
        ("chromedriver", "chromium-driver")
    };
    assert!(
        path.is_file(),
        "the browser tests need {program} at {} (install Debian's `{package}`, as \
         scripts/test does, or set {var} to its path)",
        path.display()
    );
    path
}

/// A free loopback port (bound and released; chromedriver binds it right after).
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A chromedriver process in its own process group.
struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Driver {
    fn spawn(dir: &Path) -> Driver {
        let driver = binary("CHROMEDRIVER", DEFAULT_CHROMEDRIVER);
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let out = File::create(&log).expect("chromedriver log file");
        let err = out.try_clone().expect("chromedriver log file");
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        Driver { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until chromedriver answers `/status` with `ready: true`.
    async fn ready(&mut self) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "chromedriver exited with {status} before it was ready:\n{}",
                    self.log_text()
                );
            }
            let answer = client.get(format!("{}/status", self.url())).send().await;
            if let Ok(answer) = answer {
                if let Ok(body) = answer.json::<Json>().await {
                    if body["value"]["ready"] == json!(true) {
                        return;
                    }
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "chromedriver not ready after {WAIT:?}:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group holds chromedriver and the Chromium processes it started (and
        // only those: it was made for this child).
        let group = self.child.id() as libc::pid_t;
        // SAFETY: killpg only sends a signal; the group id is our child's own pid.
        unsafe {
            libc::killpg(group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// chromedriver's (non-W3C) log endpoint: `POST /session/{id}/se/log`.
#[derive(Debug)]
struct GetBrowserLog;

impl WebDriverCompatibleCommand for GetBrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(r#"{"type":"browser"}"#.to_string()),
        )
    }
}

/// chromedriver's Chrome DevTools Protocol passthrough:
/// `POST /session/{id}/goog/cdp/execute` with `{"cmd", "params"}`.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Json,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (http::Method::POST, Some(body.to_string()))
    }
}

/// One console (or network, or CSP) message as chromedriver reports it.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO`, `DEBUG`.
    pub level: String,
    /// `console-api`, `javascript`, `network`, `security`, ...
    pub source: String,
    pub message: String,
}

impl std::fmt::Display for LogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} {}] {}", self.level, self.source, self.message)
    }
}

/// What a page of the test app shows (see `app.rs`); `None` fields are absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageInfo {
    pub url: String,
    /// `document.readyState === "complete"`.
    pub loaded: bool,
    /// The `X-Session` the app received for this page ("" when none).
    pub handle: Option<String>,
    /// The `X-Session-Parent` the app received ("" when none).
    pub parent: Option<String>,
    pub method: Option<String>,
    /// Path and query the app received.
    pub path: Option<String>,
    /// The app's request counter for this page: differs on every page load.
    pub seq: Option<u64>,
    /// `typeof window.sessiongate === "object"`.
    pub agent: bool,
    /// The gateway's bootstrap page (it has `<meta name="sessiongate-challenge">`).
    pub bootstrap: bool,
}

const PAGE_INFO_JS: &str = r#"
const text = id => { const e = document.getElementById(id); return e ? e.textContent : null; };
return {
  url: location.href,
  loaded: document.readyState === "complete",
  handle: text("handle"),
  parent: text("parent"),
  method: text("method"),
  path: text("path"),
  seq: text("seq"),
  agent: typeof window.sessiongate === "object" && window.sessiongate !== null,
  bootstrap: document.querySelector('meta[name="sessiongate-challenge"]') !== null,
};
"#;

/// A headless Chromium session, driven over WebDriver.
pub struct Browser {
    pub client: Client,
    // Field order: the client goes before the driver, the profile after it.
    _driver: Driver,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver and a fresh Chromium profile with console logging on.
    pub async fn launch() -> Browser {
        Browser::launch_in(None).await
    }

    /// Starts chromedriver and Chromium with the profile (user data) directory
    /// `profile`, which the caller keeps: a second launch with the same directory is
    /// the same browser reopened (cookies, storage), as after closing it.
    pub async fn launch_with_profile(profile: &Path) -> Browser {
        Browser::launch_in(Some(profile)).await
    }

    async fn launch_in(user_data: Option<&Path>) -> Browser {
        let chrome = binary("CHROME", DEFAULT_CHROME);
        let profile = tempfile::Builder::new()
            .prefix("sessiongate-browser-")
            .tempdir()
            .expect("a temporary Chromium profile");
        let mut driver = Driver::spawn(profile.path());
        driver.ready().await;

        let user_data = user_data.map_or_else(|| profile.path().join("profile"), Path::to_path_buf);
        let mut args: Vec<String> = CHROME_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", user_data.display()));
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chrome, "args": args }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        caps.insert("pageLoadStrategy".into(), json!("normal"));
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start Chromium ({}): {e}\n{}",
                    chrome.display(),
                    driver.log_text()
                )
            });
        Browser {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    /// Ends the WebDriver session politely (Chromium shuts down); dropping the
    /// browser afterwards stops chromedriver.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.clone().close()).await;
    }

    /// Navigates the current tab (like typing into the address bar) and waits for
    /// that document's load; pages the gateway bootstraps load later.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
    }

    /// Reloads the current tab.
    pub async fn reload(&self) {
        self.client.refresh().await.expect("reload");
    }

    /// Opens a new tab, switches to it and returns its handle.
    pub async fn new_tab(&self) -> WindowHandle {
        let created = self.client.new_window(true).await.expect("open a new tab");
        self.switch_to(&created.handle).await;
        created.handle
    }

    /// The current tab.
    pub async fn current(&self) -> WindowHandle {
        self.client.window().await.expect("current window")
    }

    /// All open tabs and windows.
    pub async fn windows(&self) -> Vec<WindowHandle> {
        self.client.windows().await.expect("list windows")
    }

    pub async fn switch_to(&self, window: &WindowHandle) {
        self.client
            .switch_to_window(window.clone())
            .await
            .unwrap_or_else(|e| panic!("switch to window {window:?}: {e}"));
    }

    /// Closes the current tab; the caller must switch to another one afterwards.
    pub async fn close_tab(&self) {
        self.client.close_window().await.expect("close the tab");
    }

    /// Waits for a window that is not in `known` (e.g. after `window.open`) and
    /// returns it, without switching.
    pub async fn wait_new_window(&self, known: &[WindowHandle]) -> WindowHandle {
        wait_until("a new window", WAIT, || async {
            let all = self.client.windows().await.ok()?;
            all.into_iter().find(|w| !known.contains(w))
        })
        .await
    }

    /// Runs a script (a function body: use `return`).
    pub async fn js(&self, script: &str) -> Result<Json, CmdError> {
        self.client.execute(script, Vec::new()).await
    }

    /// Runs a script and panics if it throws.
    pub async fn eval(&self, script: &str) -> Json {
        self.js(script)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs an async script: the last argument is the callback to call with the
    /// result.
    pub async fn eval_async(&self, script: &str) -> Json {
        self.client
            .execute_async(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("async script failed: {e}\n{script}"))
    }

    /// The text of the first element matching `css`, if there is one.
    pub async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// Waits until the element `css` exists and has non-empty text.
    pub async fn wait_text(&self, css: &str) -> String {
        wait_until(&format!("text in {css}"), WAIT, || async {
            self.text(css).await.filter(|t| !t.is_empty())
        })
        .await
    }

    /// Clicks the first element matching `css`.
    pub async fn click(&self, css: &str) {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"));
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Presses and releases one key on whatever has focus (also inside a closed
    /// shadow root, which element-targeted commands cannot reach).
    pub async fn press(&self, key: Key) {
        let actions = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: key.into() })
            .then(KeyAction::Up { value: key.into() });
        self.client
            .perform_actions(actions)
            .await
            .expect("press a key");
    }

    /// Runs a Chrome DevTools Protocol command in the current tab.
    pub async fn cdp(&self, cmd: &'static str, params: Json) -> Json {
        self.client
            .issue_cmd(Cdp { cmd, params })
            .await
            .unwrap_or_else(|e| panic!("CDP {cmd}: {e}"))
    }

    /// The centre, in viewport pixels, of the first button or link with exactly the
    /// text `label` inside a *closed* shadow root (where the agent keeps its UI and
    /// where neither scripts nor WebDriver's element commands can reach), or `None`
    /// when there is none. DevTools sees through closed roots.
    pub async fn closed_shadow_control(&self, label: &str) -> Option<(f64, f64)> {
        let document = self
            .cdp("DOM.getDocument", json!({ "depth": -1, "pierce": true }))
            .await;
        let node = find_control(&document["root"], label, false)?;
        let model = self
            .cdp("DOM.getBoxModel", json!({ "backendNodeId": node }))
            .await;
        let quad = model["model"]["border"].as_array()?;
        let at = |i: usize| quad.get(i).and_then(Json::as_f64);
        Some(((at(0)? + at(4)?) / 2.0, (at(1)? + at(5)?) / 2.0))
    }

    /// Every text inside closed shadow roots (the agent's UI), one text node a line.
    pub async fn closed_shadow_text(&self) -> String {
        let document = self
            .cdp("DOM.getDocument", json!({ "depth": -1, "pierce": true }))
            .await;
        let mut lines = Vec::new();
        collect_text(&document["root"], false, &mut lines);
        lines.join("\n")
    }

    /// Saves a screenshot of the tab's viewport as a PNG at `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// A real left click of the mouse at viewport position `(x, y)`: the pointer
    /// moves there, then presses and releases (pointer, mouse and click events, as
    /// a person's click makes them).
    pub async fn mouse_click(&self, x: f64, y: f64) {
        let mouse = MouseActions::new("mouse".into())
            .then(PointerAction::MoveTo {
                duration: Some(Duration::from_millis(50)),
                x,
                y,
            })
            .then(PointerAction::Down {
                button: MOUSE_BUTTON_LEFT,
            })
            .then(PointerAction::Up {
                button: MOUSE_BUTTON_LEFT,
            });
        self.client
            .perform_actions(mouse)
            .await
            .expect("a mouse click");
        let _ = self.client.release_actions().await;
    }

    /// What the current document shows, or `None` while it is being replaced.
    pub async fn page(&self) -> Option<PageInfo> {
        let value = self.js(PAGE_INFO_JS).await.ok()?;
        let field = |name: &str| value[name].as_str().map(str::to_string);
        Some(PageInfo {
            url: field("url")?,
            loaded: value["loaded"].as_bool()?,
            handle: field("handle"),
            parent: field("parent"),
            method: field("method"),
            path: field("path"),
            seq: field("seq").and_then(|s| s.parse().ok()),
            agent: value["agent"].as_bool()?,
            bootstrap: value["bootstrap"].as_bool()?,
        })
    }

    /// Waits for a fully loaded page of the test app (one that renders `#seq`)
    /// other than the one numbered `after`: bootstrap pages and the page that was
    /// there before the navigation do not count.
    pub async fn wait_app_page(&self, after: Option<u64>) -> PageInfo {
        let what = match after {
            Some(seq) => format!("a loaded app page after page #{seq}"),
            None => "a loaded app page".to_string(),
        };
        wait_until(&what, WAIT, || async {
            self.page()
                .await
                .filter(|p| p.loaded && p.seq.is_some() && p.seq != after)
        })
        .await
    }

    /// Waits for a loaded app page and returns the session handle it was served
    /// with; fails if it was served without one.
    pub async fn wait_handle(&self, after: Option<u64>, context: &str) -> (String, PageInfo) {
        let page = self.wait_app_page(after).await;
        let handle = page.handle.clone().unwrap_or_default();
        assert!(
            is_uuid(&handle),
            "{context}: the app got no session handle (X-Session = {handle:?}) for {}",
            page.url
        );
        (handle, page)
    }

    /// Waits for a loaded page that is not the gateway's bootstrap page, then
    /// fails unless the agent's API (`window.sessiongate`) is there: the agent is a
    /// blocking script, so it exists by the time the page has loaded.
    pub async fn wait_agent(&self, context: &str) {
        let page = wait_until(&format!("{context}: a loaded page"), WAIT, || async {
            self.page().await.filter(|p| p.loaded && !p.bootstrap)
        })
        .await;
        if page.agent {
            return;
        }
        // Allow a moment in case the page was replaced while being read.
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if self.page().await.is_some_and(|p| p.agent) {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        panic!(
            "{context}: the agent is not running on {} (window.sessiongate is undefined)",
            page.url
        );
    }

    /// `window.sessiongate.state` ("" when the agent is not there).
    pub async fn agent_state(&self) -> Option<String> {
        let value = self
            .js("return window.sessiongate ? String(window.sessiongate.state) : '';")
            .await
            .ok()?;
        value.as_str().map(str::to_string)
    }

    /// Waits until `window.sessiongate.state` is `state`.
    pub async fn wait_agent_state(&self, state: &str, timeout: Duration, context: &str) {
        let mut last = None;
        let found = tokio::time::timeout(timeout, async {
            loop {
                let now = self.agent_state().await;
                if now.as_deref() == Some(state) {
                    return;
                }
                last = now;
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "{context}: window.sessiongate.state never became {state:?} within {timeout:?} (last seen: {last:?})"
        );
    }

    /// Every browser log entry since the last call (chromedriver drains its buffer).
    pub async fn console(&self) -> Vec<LogEntry> {
        let value = self
            .client
            .issue_cmd(GetBrowserLog)
            .await
            .expect("read the browser log");
        value
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| LogEntry {
                        level: e["level"].as_str().unwrap_or_default().to_string(),
                        source: e["source"].as_str().unwrap_or_default().to_string(),
                        message: e["message"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Console errors (level `SEVERE`: `console.error`, uncaught exceptions, failed
    /// loads, CSP violations) since the last read.
    pub async fn console_errors(&self) -> Vec<LogEntry> {
        self.console()
            .await
            .into_iter()
            .filter(|e| e.level == "SEVERE")
            .collect()
    }

    /// Fails if the browser logged any error since the last read.
    pub async fn assert_no_console_errors(&self, context: &str) {
        let errors = self.console_errors().await;
        assert!(
            errors.is_empty(),
            "{context}: console errors:\n{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// Fails if the browser logged any error since the last read, except those
    /// `allowed` says are expected.
    pub async fn assert_no_console_errors_except(
        &self,
        context: &str,
        allowed: impl Fn(&LogEntry) -> bool,
    ) {
        let errors: Vec<_> = self
            .console_errors()
            .await
            .into_iter()
            .filter(|e| !allowed(e))
            .collect();
        assert!(
            errors.is_empty(),
            "{context}: console errors:\n{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The backend node id of the first `BUTTON` or `A` labelled `label` inside a
/// closed shadow root, in a DevTools DOM tree.
fn find_control(node: &Json, label: &str, closed: bool) -> Option<u64> {
    let name = node["nodeName"].as_str().unwrap_or_default();
    if closed && (name == "BUTTON" || name == "A") {
        let text: String = node["children"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|child| child["nodeType"] == json!(3))
            .filter_map(|child| child["nodeValue"].as_str())
            .collect();
        if text.trim() == label {
            return node["backendNodeId"].as_u64();
        }
    }
    let children = node["children"].as_array().into_iter().flatten();
    let roots = node["shadowRoots"].as_array().into_iter().flatten();
    children
        .map(|child| (child, closed))
        .chain(roots.map(|root| (root, root["shadowRootType"] == json!("closed"))))
        .find_map(|(child, closed)| find_control(child, label, closed))
}

/// The text nodes under closed shadow roots of a DevTools DOM tree (not inside
/// `<style>`), in document order.
fn collect_text(node: &Json, closed: bool, lines: &mut Vec<String>) {
    if node["nodeName"] == json!("STYLE") {
        return;
    }
    if closed && node["nodeType"] == json!(3) {
        if let Some(text) = node["nodeValue"].as_str().filter(|t| !t.trim().is_empty()) {
            lines.push(text.to_string());
        }
    }
    for child in node["children"].as_array().into_iter().flatten() {
        collect_text(child, closed, lines);
    }
    for root in node["shadowRoots"].as_array().into_iter().flatten() {
        collect_text(root, root["shadowRootType"] == json!("closed"), lines);
    }
}

/// Whether `s` looks like a session handle (a UUID).
pub fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok() && s.len() == 36
}

/// The network error Chromium logs when a reserved endpoint answers 401, which is
/// how the agent learns that its session has ended (PROTOCOL.md): expected in
/// tests that let sessions end.
pub fn reserved_401(entry: &LogEntry) -> bool {
    entry.source == "network"
        && entry.message.contains("/__sessiongate/")
        && entry.message.contains("status of 401")
}

/// Asserts that neither the address bar nor the request the app saw carries a
/// `__sg*` parameter (the agent removes them with `history.replaceState`; the
/// gateway strips them before forwarding).
pub fn assert_clean(page: &PageInfo, context: &str) {
    assert!(
        !page.url.contains("__sg"),
        "{context}: the address bar still shows a __sg parameter: {}",
        page.url
    );
    let path = page.path.as_deref().unwrap_or_default();
    assert!(
        !path.contains("__sg"),
        "{context}: the app received a __sg parameter: {path}"
    );
}
