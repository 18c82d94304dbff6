//! The cookie jar (`upstream.cookie_jar`) in front of a real, unmodified PHP app:
//! Debian's `php -S` serving `php/counter.php`, which counts visits in `$_SESSION`
//! under PHP's own `PHPSESSID` cookie. With the jar each tab has its own PHP session
//! across reloads, links and form posts, and the browser never holds `PHPSESSID`;
//! without it, every tab shares one, as before.
//!
//! Needs PHP's CLI: `PHP` (default `/usr/bin/php`, Debian's `php-cli`).

use std::fs::File;
use std::net::TcpListener as StdListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sessiongate::config::{CookieJar, SessionMode};
use sessiongate::server::Running;
use tempfile::TempDir;

use crate::common::gateway_for;
use crate::harness::{wait_until, Browser, WAIT};

const DEFAULT_PHP: &str = "/usr/bin/php";

/// `php -S` on a free loopback port with `counter.php` as its router, in its own
/// process group (killed on drop), keeping its sessions in a temporary directory.
struct Php {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Php {
    async fn start() -> Php {
        let php = std::env::var_os("PHP").map_or_else(|| PathBuf::from(DEFAULT_PHP), PathBuf::from);
        assert!(
            php.is_file(),
            "the cookie-jar browser test needs PHP's CLI at {} (install Debian's `php-cli`, \
             as scripts/test does, or set PHP to its path)",
            php.display()
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/php/counter.php");
        let dir = tempfile::Builder::new()
            .prefix("sessiongate-php-")
            .tempdir()
            .expect("a temporary directory for PHP");
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let log = File::create(dir.path().join("php.log")).expect("php log file");
        let child = Command::new(&php)
            .arg("-d")
            .arg(format!("session.save_path={}", dir.path().display()))
            .args(["-d", "session.use_strict_mode=1", "-S"])
            .arg(format!("127.0.0.1:{port}"))
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("php log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", php.display()));
        let php = Php { child, port, dir };
        let addr = format!("127.0.0.1:{port}");
        wait_until("php -S to listen", WAIT, || async {
            tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ())
        })
        .await;
        php
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("php.log")).unwrap_or_default()
    }
}

impl Drop for Php {
    fn drop(&mut self) {
        let group = self.child.id() as libc::pid_t;
        // SAFETY: killpg only sends a signal; the group id is our child's own pid.
        unsafe {
            libc::killpg(group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// What a loaded counter page shows.
#[derive(Debug, Clone)]
struct Count {
    n: u64,
    load: String,
    via: String,
}

/// Waits for a fully loaded counter page other than the load `after` (bootstrap
/// pages and the page being replaced do not count) and reads it.
async fn wait_count(browser: &Browser, after: Option<&Count>, context: &str) -> Count {
    let script = "const n = document.getElementById('n'), l = document.getElementById('load'), \
                  v = document.getElementById('via'); \
                  return document.readyState === 'complete' && n && l && v \
                  ? [n.textContent, l.textContent, v.textContent] : null;";
    let count = wait_until(&format!("{context}: a counter page"), WAIT, || async {
        let value = browser.js(script).await.ok()?;
        let field = |i: usize| value.get(i)?.as_str().map(str::to_string);
        let count = Count {
            n: field(0)?.parse().ok()?,
            load: field(1)?,
            via: field(2)?,
        };
        (after.map(|a| &a.load) != Some(&count.load)).then_some(count)
    })
    .await;
    browser.wait_agent(context).await;
    count
}

/// The names of every cookie the browser holds for the gateway's origin, HttpOnly
/// ones included (WebDriver's Get All Cookies, which `document.cookie` is not).
async fn cookie_names(browser: &Browser) -> Vec<String> {
    browser
        .client
        .get_all_cookies()
        .await
        .expect("get all cookies")
        .iter()
        .map(|c| c.name().to_string())
        .collect()
}

/// Reload, a link and a form POST in the current tab: the counts that follow `from`.
async fn reload_link_post(browser: &Browser, from: Count, tab: &str) -> Count {
    browser.reload().await;
    let reloaded = wait_count(browser, Some(&from), &format!("{tab}, reload")).await;
    assert_eq!(
        reloaded.n,
        from.n + 1,
        "{tab}: reload counts in the tab's PHP session"
    );
    browser.click("#link").await;
    let linked = wait_count(browser, Some(&reloaded), &format!("{tab}, link")).await;
    assert_eq!(linked.via, "GET link");
    assert_eq!(
        linked.n,
        from.n + 2,
        "{tab}: a link counts in the tab's PHP session"
    );
    browser.click("#post").await;
    let posted = wait_count(browser, Some(&linked), &format!("{tab}, form POST")).await;
    assert_eq!(posted.via, "POST post");
    assert_eq!(
        posted.n,
        from.n + 3,
        "{tab}: a form POST counts in the tab's PHP session"
    );
    posted
}

struct Stop(Running);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_jar_every_tab_has_its_own_php_session() {
    let php = Php::start().await;
    let gateway = Stop(
        gateway_for(&php.url(), SessionMode::Tab, |c| {
            c.upstream.cookie_jar = CookieJar::Builtin;
        })
        .await,
    );
    let url = format!("http://{}/counter", gateway.0.public_addr);
    let browser = Browser::launch().await;

    let tab_a = browser.current().await;
    browser.goto(&url).await;
    let a = wait_count(&browser, None, "tab A, first visit").await;
    assert_eq!(a.n, 1, "php log:\n{}", php.log());
    let a = reload_link_post(&browser, a, "tab A").await;

    let tab_b = browser.new_tab().await;
    browser.goto(&url).await;
    let b = wait_count(&browser, None, "tab B, first visit").await;
    assert_eq!(b.n, 1, "a new tab starts a new PHP session");
    let b = reload_link_post(&browser, b, "tab B").await;

    browser.switch_to(&tab_a).await;
    browser.reload().await;
    let again = wait_count(&browser, Some(&a), "tab A, back").await;
    assert_eq!(again.n, 5, "tab A's PHP session went on where it was");
    browser.switch_to(&tab_b).await;
    browser.reload().await;
    let again = wait_count(&browser, Some(&b), "tab B, back").await;
    assert_eq!(again.n, 5, "tab B's PHP session went on where it was");

    let names = cookie_names(&browser).await;
    assert!(
        !names.iter().any(|n| n == "PHPSESSID"),
        "the browser must never hold PHPSESSID: {names:?}"
    );
    assert!(names.iter().any(|n| n == "sg_browser"), "{names:?}");
    assert_eq!(gateway.0.store.jar_count(), 2, "one jar per tab's session");
    browser
        .assert_no_console_errors("PHP app with the jar")
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_jar_tabs_share_one_php_session() {
    let php = Php::start().await;
    let gateway = Stop(gateway_for(&php.url(), SessionMode::Tab, |_| {}).await);
    let url = format!("http://{}/counter", gateway.0.public_addr);
    let browser = Browser::launch().await;

    let tab_a = browser.current().await;
    browser.goto(&url).await;
    let a = wait_count(&browser, None, "tab A, first visit").await;
    assert_eq!(a.n, 1, "php log:\n{}", php.log());
    browser.reload().await;
    let a = wait_count(&browser, Some(&a), "tab A, reload").await;
    assert_eq!(a.n, 2);

    browser.new_tab().await;
    browser.goto(&url).await;
    let b = wait_count(&browser, None, "tab B, first visit").await;
    assert_eq!(
        b.n, 3,
        "without the jar the browser's PHPSESSID is shared by its tabs"
    );

    browser.switch_to(&tab_a).await;
    browser.reload().await;
    let a = wait_count(&browser, Some(&a), "tab A, back").await;
    assert_eq!(a.n, 4);
    let names = cookie_names(&browser).await;
    assert!(names.iter().any(|n| n == "PHPSESSID"), "{names:?}");
    assert_eq!(gateway.0.store.jar_count(), 0);
    browser
        .assert_no_console_errors("PHP app without the jar")
        .await;
    browser.close().await;
}
