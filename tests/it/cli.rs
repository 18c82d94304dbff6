//! The `sessiongate` binary from the outside (DESIGN.md §8): `check` reports every
//! bad key, `run` refuses a bad config before listening and drains on SIGTERM, and
//! `demo` serves the bundled app behind the gateway. Every test runs the real binary
//! on loopback ports; every wait is bounded and the child is killed if a test fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::common::{cookie_client, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_sessiongate");

/// Upper bound for anything the binary is expected to do "quickly".
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------
// Helpers: running the binary, collecting its output, writing configs.
// ---------------------------------------------------------------------------------

/// A command for the binary with a predictable environment: no inherited
/// `SESSIONGATE_*` variables or `RUST_LOG`, only the variables in `env`.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("SESSIONGATE_")
        {
            cmd.env_remove(name);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.envs(env.iter().copied());
    cmd
}

/// What a finished run printed.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs the binary to completion; panics (killing it) if it takes longer than `WAIT`.
async fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let output = tokio::time::timeout(WAIT, command(args, env).output())
        .await
        .unwrap_or_else(|_| panic!("sessiongate {args:?} did not exit within {WAIT:?}"))
        .expect("the sessiongate binary starts");
    Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Lines of one output stream, read by a background task as they arrive.
struct Lines {
    rx: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn collect(stream: impl AsyncRead + Unpin + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The first line not yet looked at for which `pick` returns something.
    /// `Err` when the stream ends or `WAIT` passes first.
    async fn find<T>(
        &mut self,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, &'static str> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => return Err("the stream ended"),
                Err(_) => return Err("timed out"),
            };
            let found = pick(&line);
            self.seen.push(line);
            if let Some(found) = found {
                return Ok(found);
            }
        }
    }

    /// Takes whatever has arrived so far without waiting.
    fn drain(&mut self) {
        while let Ok(line) = self.rx.try_recv() {
            self.seen.push(line);
        }
    }
}

/// A running `sessiongate`; killed when dropped, so a failing test never leaks it.
struct Gate {
    child: Child,
    stdout: Lines,
    stderr: Lines,
}

impl Gate {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Gate {
        Gate::from_command(command(args, env))
    }

    fn from_command(mut command: Command) -> Gate {
        let mut child = command.spawn().expect("the sessiongate binary starts");
        let stdout = Lines::collect(child.stdout.take().expect("stdout is piped"));
        let stderr = Lines::collect(child.stderr.take().expect("stderr is piped"));
        Gate {
            child,
            stdout,
            stderr,
        }
    }

    /// Everything the process printed so far, for failure messages.
    fn transcript(&mut self) -> String {
        self.stdout.drain();
        self.stderr.drain();
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.seen.join("\n"),
            self.stderr.seen.join("\n")
        )
    }

    /// Waits for a stdout line that `pick` accepts; panics with the transcript.
    async fn stdout_line<T>(&mut self, what: &str, pick: impl FnMut(&str) -> Option<T>) -> T {
        match self.stdout.find(pick).await {
            Ok(found) => found,
            Err(why) => panic!("no {what} on stdout ({why}); saw:\n{}", self.transcript()),
        }
    }

    /// Waits for a stderr line that `pick` accepts; panics with the transcript.
    async fn stderr_line<T>(&mut self, what: &str, pick: impl FnMut(&str) -> Option<T>) -> T {
        match self.stderr.find(pick).await {
            Ok(found) => found,
            Err(why) => panic!("no {what} on stderr ({why}); saw:\n{}", self.transcript()),
        }
    }

    /// The public address, from the JSON `sessiongate started` event (`log.format =
    /// "json"` in the config).
    async fn listen_addr(&mut self) -> SocketAddr {
        self.stderr_line("JSON `sessiongate started` event", |line| {
            json_event(line, "sessiongate started")?
                .get("listen")?
                .as_str()?
                .parse()
                .ok()
        })
        .await
    }

    fn pid(&self) -> libc::pid_t {
        let pid = self.child.id().expect("the child is still running");
        libc::pid_t::try_from(pid).expect("pid fits in pid_t")
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with the pid of our own, not yet reaped, child.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits for the process to exit; panics (and the drop kills it) after `within`.
    async fn exit_within(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for sessiongate"),
            Err(_) => panic!(
                "sessiongate did not exit within {within:?}; saw:\n{}",
                self.transcript()
            ),
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A JSON log event's `fields` when its message is `message`.
fn json_event(line: &str, message: &str) -> Option<serde_json::Value> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = event.get("fields")?;
    (fields.get("message")?.as_str()? == message).then(|| fields.clone())
}

/// Writes `text` as a config file in `dir` and returns its path.
fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("sessiongate.toml");
    std::fs::write(&path, text).expect("write the config file");
    path
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Asserts that each `(source, key)` is named together on a line of its own and
/// that no two of them share a line.
fn assert_each_on_own_line(text: &str, expected: &[(&str, &str)]) {
    let lines: Vec<&str> = text.lines().collect();
    let mut used = Vec::new();
    for (source, key) in expected {
        let at = lines
            .iter()
            .position(|line| line.contains(source) && line.contains(&format!(": {key}:")))
            .unwrap_or_else(|| panic!("no line names {source:?} and key {key:?} in:\n{text}"));
        assert!(
            !used.contains(&at),
            "{key:?} shares line {at} with another problem in:\n{text}"
        );
        used.push(at);
    }
}

/// What a fresh connection got for a plain GET.
enum Probe {
    Refused(std::io::ErrorKind),
    NoResponse,
    Answered(String),
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Refused(kind) => write!(f, "refused ({kind})"),
            Probe::NoResponse => f.write_str("connected, no response"),
            Probe::Answered(status) => write!(f, "answered {status:?}"),
        }
    }
}

/// Opens a new connection to `addr`, sends a GET and reads for at most 500 ms.
async fn probe(addr: SocketAddr) -> Probe {
    let limit = Duration::from_millis(500);
    let mut stream = match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Probe::Refused(error.kind()),
        Err(_) => return Probe::NoResponse,
    };
    let request = b"GET /probe HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return Probe::NoResponse;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    match answer.lines().next() {
        Some(status) if status.starts_with("HTTP/") => Probe::Answered(status.to_owned()),
        _ => Probe::NoResponse,
    }
}

// ---------------------------------------------------------------------------------
// sessiongate check
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn check_names_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        r#"
[listen]
adress = "127.0.0.1:8080"

[session]
timeout = "soon"
mode = "tabs"

[upstream]
url = "ftp://example"

[browser]
prefix = "no-slash"
"#,
    );
    let file_name = path_str(&file);
    let out = run_to_end(
        &["check", "--config", file_name],
        &[
            ("SESSIONGATE_ADMIN__ADDRESS", "0.0.0.0:9999"),
            ("SESSIONGATE_ADMIN__TOKEN", "short"),
            ("SESSIONGATE_SESSION__TIMOUT", "1s"),
        ],
    )
    .await;

    assert!(!out.status.success(), "check must fail: {out}");
    assert!(
        out.stderr.contains(file_name),
        "stderr does not name the file: {out}"
    );
    assert_each_on_own_line(
        &out.stderr,
        &[
            (file_name, "listen.adress"),
            (file_name, "session.timeout"),
            (file_name, "session.mode"),
            (file_name, "upstream.url"),
            (file_name, "browser.prefix"),
            ("SESSIONGATE_ADMIN__TOKEN", "admin.token"),
            ("SESSIONGATE_SESSION__TIMOUT", "session.timout"),
        ],
    );
    // The offending values are named too, so the operator can find the line.
    for needle in ["\"soon\"", "\"tabs\"", "ftp://example", "no-slash"] {
        assert!(out.stderr.contains(needle), "{needle} not named: {out}");
    }
    // The token is a secret: the reason gives its length, never its value.
    assert!(
        !out.stderr.contains("\"short\""),
        "token value echoed: {out}"
    );
    assert!(out.stdout.is_empty(), "nothing printed on stdout: {out}");
}

#[tokio::test]
async fn check_prints_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        r#"
[listen]
address = "127.0.0.1:0"

[session]
timeout = "45s"
"#,
    );
    let out = run_to_end(
        &["check", "--config", path_str(&file)],
        &[("SESSIONGATE_SESSION__MODE", "browser")],
    )
    .await;

    assert!(out.status.success(), "check must pass: {out}");
    let effective: toml::Table = out
        .stdout
        .parse()
        .unwrap_or_else(|e| panic!("stdout is not TOML ({e}): {out}"));
    let get = |section: &str, key: &str| {
        effective
            .get(section)
            .and_then(|s| s.get(key))
            .and_then(toml::Value::as_str)
            .map(str::to_owned)
    };
    assert_eq!(
        get("listen", "address").as_deref(),
        Some("127.0.0.1:0"),
        "{out}"
    );
    assert_eq!(get("session", "timeout").as_deref(), Some("45s"), "{out}");
    // The environment wins over the file and the defaults.
    assert_eq!(get("session", "mode").as_deref(), Some("browser"), "{out}");
    // Untouched keys show their defaults.
    assert_eq!(
        get("upstream", "url").as_deref(),
        Some("http://127.0.0.1:3000"),
        "{out}"
    );
}

#[tokio::test]
async fn check_missing_config_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("does-not-exist.toml");
    let out = run_to_end(&["check", "--config", path_str(&missing)], &[]).await;

    assert!(!out.status.success(), "check must fail: {out}");
    assert!(
        out.stderr
            .lines()
            .any(|line| line.contains(path_str(&missing)) && line.contains("cannot read")),
        "no line names the missing file: {out}"
    );
    assert!(out.stdout.is_empty(), "nothing printed on stdout: {out}");
}

// ---------------------------------------------------------------------------------
// sessiongate run
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn bad_config_exits_nonzero_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        r#"
[listen]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[session]
timeout = "soon"
"#,
    );
    let started = tokio::time::Instant::now();
    let out = run_to_end(&["--config", path_str(&file)], &[]).await;

    assert!(!out.status.success(), "run must fail: {out}");
    assert!(
        out.stderr.lines().any(|line| line.contains(path_str(&file))
            && line.contains("session.timeout")
            && line.contains("\"soon\"")),
        "no line names the file, the key and the value: {out}"
    );
    assert!(
        !out.stderr.contains("sessiongate started"),
        "it started listening anyway: {out}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} to refuse the config",
        started.elapsed()
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_request() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        &format!(
            r#"
[listen]
address = "127.0.0.1:0"
drain_timeout = "5s"

[admin]
address = "127.0.0.1:0"

[upstream]
url = "{}"
response_timeout = "5s"

[session]
mode = "browser"

[log]
format = "json"
"#,
            upstream.url()
        ),
    );
    let mut gate = Gate::spawn(&["--config", path_str(&file)], &[]);
    let listen = gate.listen_addr().await;

    let client = cookie_client();
    let slow = tokio::spawn(async move {
        let response = client
            .get(format!("http://{listen}/slow?ms=1500"))
            .send()
            .await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.text().await?))
    });
    let recorded = upstream.wait_for(1).await;
    assert!(
        recorded[0].uri.starts_with("/slow"),
        "{:?}",
        recorded[0].uri
    );

    gate.signal(libc::SIGTERM);

    // The listener closes as soon as the signal is handled; until then (a few ms)
    // a probe may still be answered. The slow request must still be in flight when
    // the first probe fails, or this would not show draining.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut probes = Vec::new();
    loop {
        let outcome = probe(listen).await;
        let closed = !matches!(outcome, Probe::Answered(_));
        probes.push(outcome);
        if closed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new connections still answered 1 s after SIGTERM: {probes:?}\n{}",
            gate.transcript()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !slow.is_finished(),
        "the slow request finished before the listener closed; probes: {probes:?}"
    );

    let (status, body) = tokio::time::timeout(WAIT, slow)
        .await
        .expect("the in-flight request completes")
        .expect("the request task does not panic")
        .unwrap_or_else(|e| panic!("in-flight request failed: {e}\n{}", gate.transcript()));
    assert_eq!(status, 200, "{}", gate.transcript());
    assert_eq!(body, "slow");

    let exit = gate.exit_within(Duration::from_secs(5)).await;
    assert_eq!(exit.code(), Some(0), "exit: {exit}\n{}", gate.transcript());
    let after_exit = probe(listen).await;
    assert!(
        matches!(after_exit, Probe::Refused(_)),
        "the port is still open after exit: {after_exit:?}"
    );
}

// ---------------------------------------------------------------------------------
// sessiongate demo
// ---------------------------------------------------------------------------------

/// What the demo's home page says about the session it was rendered for.
#[derive(Debug)]
struct HomePage {
    handle: String,
    visits: u64,
    body: String,
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

fn parse_home(body: String) -> HomePage {
    let handle = between(&body, "<code class=\"handle\">", "</code>")
        .unwrap_or_else(|| panic!("no session handle on the page:\n{body}"))
        .to_owned();
    let visits = body
        .lines()
        .find(|line| line.contains("Visits"))
        .and_then(|line| between(line, "<strong>", "</strong>"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no visit counter on the page:\n{body}"));
    HomePage {
        handle,
        visits,
        body,
    }
}

async fn load_home(client: &reqwest::Client, base: &str) -> HomePage {
    let response = client
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {base}/ failed: {e}"));
    assert_eq!(response.status(), 200, "GET {base}/");
    parse_home(response.text().await.expect("home page body"))
}

/// Starts `sessiongate demo` on ephemeral ports (in `mode`, if given) and returns it
/// with the address it tells the user to open.
async fn spawn_demo(mode: Option<&str>) -> (Gate, String) {
    let mut env = vec![
        ("SESSIONGATE_LISTEN__ADDRESS", "127.0.0.1:0"),
        ("SESSIONGATE_ADMIN__ADDRESS", "127.0.0.1:0"),
    ];
    env.extend(mode.map(|mode| ("SESSIONGATE_SESSION__MODE", mode)));
    let mut gate = Gate::spawn(&["demo"], &env);
    let base = gate
        .stdout_line("`open http://…` line", |line| {
            let url = line.split("open ").nth(1)?.split_whitespace().next()?;
            url.starts_with("http://").then(|| url.to_owned())
        })
        .await;
    (gate, base)
}

/// The demo in `browser` mode, driven by two cookie jars (browsers without
/// JavaScript). The default `tab` mode is driven in real Chromium by the browser
/// suite; here it only has to put the agent into the first page.
#[tokio::test]
async fn demo_serves_two_independent_counters() {
    let (tab_mode, base) = spawn_demo(None).await;
    let first = reqwest::Client::new()
        .get(format!("{base}/"))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .expect("GET /");
    let page = first.text().await.expect("home page body");
    let tag = between(&page, "<head>", ">").expect("the agent tag opens <head>");
    assert!(
        tag.contains("/__sessiongate/agent.js?v=") && tag.contains("data-token="),
        "first contact gets the agent with the new tab's token: {tag}"
    );
    drop(tab_mode);

    let (_gate, base) = spawn_demo(Some("browser")).await;

    let (a, b) = (cookie_client(), cookie_client());
    let mut page_a = load_home(&a, &base).await;
    for _ in 0..2 {
        page_a = load_home(&a, &base).await;
    }
    let page_b = load_home(&b, &base).await;
    assert_eq!(page_a.visits, 3, "A after three loads: {page_a:?}");
    assert_eq!(page_b.visits, 1, "B after one load: {page_b:?}");
    assert_ne!(page_a.handle, page_b.handle, "A and B share a session");

    // Post/Redirect/Get: the client follows the 303 back to A's home page.
    let response = a
        .post(format!("{base}/notes"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("note=hello%3Cb%3E")
        .send()
        .await
        .expect("POST /notes");
    assert_eq!(response.status(), 200, "after the redirect");
    assert_eq!(response.url().path(), "/", "redirected home");
    let page_a = parse_home(response.text().await.expect("home page body"));
    assert!(
        page_a.body.contains("<li>hello&lt;b&gt;</li>"),
        "A's note missing or not escaped:\n{}",
        page_a.body
    );
    assert!(!page_a.body.contains("hello<b>"), "A's note unescaped");
    assert_eq!(page_a.visits, 4, "the redirect was A's fourth visit");

    let page_b = load_home(&b, &base).await;
    assert!(
        !page_b.body.contains("hello"),
        "B sees A's note:\n{}",
        page_b.body
    );
    assert_eq!(page_b.visits, 2, "B's second visit");
    assert_eq!(
        page_b.handle,
        load_home(&b, &base).await.handle,
        "B keeps its session"
    );
}

#[tokio::test]
async fn accept_loop_survives_running_out_of_file_descriptors() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        &format!(
            r#"
[listen]
address = "127.0.0.1:0"
header_timeout = "30s"
[admin]
address = "127.0.0.1:0"
[upstream]
url = "{}"
[log]
format = "json"
"#,
            upstream.url()
        ),
    );
    let mut command = command(&["--config", path_str(&file)], &[]);
    // SAFETY: setrlimit(2) is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut gate = Gate::from_command(command);
    let listen = gate.listen_addr().await;

    // More silent connections than the process has descriptors: the kernel completes
    // the handshakes, and accept(2) starts failing with EMFILE.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(listen).await.unwrap());
    }
    gate.stderr_line("an `accept failed` warning", |line| {
        line.contains("accept failed").then_some(())
    })
    .await;
    drop(held);

    // Once descriptors are free again, it serves as before.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let attempt = reqwest::Client::new()
            .get(format!("http://{listen}/after"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if matches!(&attempt, Ok(r) if r.status() == 200) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not serving again: {attempt:?}\n{}",
            gate.transcript()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gate.child.try_wait().unwrap().is_none(),
        "the gateway exited"
    );
}

// ---------------------------------------------------------------------------------
// sessiongate demo on a busy port
// ---------------------------------------------------------------------------------

/// A loopback port held by the test for as long as the listener lives.
fn hold_port() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address");
    (listener, addr)
}

/// The demo's built-in addresses (8080 and 9090) are replaced by ports this test
/// holds (the hidden `--default-listen`/`--default-admin`), so the test neither
/// depends on nor disturbs whatever uses 8080 on the machine. Nothing is configured,
/// so both listeners move to free ports and the demo says where.
#[tokio::test]
async fn demo_moves_to_a_free_port_when_its_default_is_taken() {
    let (_listen, taken_listen) = hold_port();
    let (_admin, taken_admin) = hold_port();
    let mut gate = Gate::spawn(
        &[
            "demo",
            "--default-listen",
            &taken_listen.to_string(),
            "--default-admin",
            &taken_admin.to_string(),
        ],
        &[],
    );
    for taken in [taken_listen, taken_admin] {
        gate.stdout_line("an `is in use` note", |line| {
            line.contains(&format!("{taken} is in use")).then_some(())
        })
        .await;
    }
    let base = gate
        .stdout_line("`open http://…` line", |line| {
            let url = line.split("open ").nth(1)?.split_whitespace().next()?;
            url.starts_with("http://").then(|| url.to_owned())
        })
        .await;
    let metrics = gate
        .stdout_line("`metrics at http://…` line", |line| {
            let url = line.split("metrics at ").nth(1)?.trim();
            url.starts_with("http://").then(|| url.to_owned())
        })
        .await;
    assert!(
        !base.ends_with(&format!(":{}", taken_listen.port())),
        "{base}"
    );
    assert!(
        !metrics.contains(&format!(":{}/", taken_admin.port())),
        "{metrics}"
    );

    let home = reqwest::get(format!("{base}/")).await.expect("GET /");
    assert_eq!(home.status(), 200, "{}", gate.transcript());
    let metrics = reqwest::get(&metrics).await.expect("GET /metrics");
    assert_eq!(metrics.status(), 200, "{}", gate.transcript());
}

/// An address the operator chose is never replaced: the demo stops, naming the
/// cause once, with a hint at the variable that sets another one.
#[tokio::test]
async fn demo_on_a_taken_configured_address_fails_with_the_cause_once_and_a_hint() {
    let (_held, taken) = hold_port();
    let taken = taken.to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        &format!("[listen]\naddress = \"{taken}\"\n[admin]\naddress = \"127.0.0.1:0\"\n"),
    );
    let from_env = [
        ("SESSIONGATE_LISTEN__ADDRESS", taken.as_str()),
        ("SESSIONGATE_ADMIN__ADDRESS", "127.0.0.1:0"),
    ];
    for (args, env) in [
        (&["demo"][..], &from_env[..]),
        (&["demo", "--config", path_str(&file)], &[]),
    ] {
        let out = run_to_end(args, env).await;
        assert!(!out.status.success(), "{args:?} must fail: {out}");
        assert!(
            out.stderr
                .contains(&format!("cannot listen on listen address {taken}: ")),
            "{out}"
        );
        assert_eq!(
            out.stderr.matches("already in use").count(),
            1,
            "the cause is printed once: {out}"
        );
        assert!(
            out.stderr
                .contains("hint: choose another address, e.g. SESSIONGATE_LISTEN__ADDRESS="),
            "{out}"
        );
        assert!(!out.stdout.contains("open http"), "{out}");
    }
}

// ---------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------

/// A gateway config on ephemeral ports in front of `upstream`, with `extra` lines.
fn gateway_config(dir: &tempfile::TempDir, upstream: &Upstream, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"{}\"\n{extra}",
            upstream.url()
        ),
    )
}

/// Requests that log what a log reader meets most: a request without a session,
/// and a first page load that starts a session (tab mode, no parent).
async fn traffic(listen: SocketAddr) {
    let client = reqwest::Client::new();
    let plain = client.get(format!("http://{listen}/plain")).send().await;
    assert_eq!(plain.expect("GET /plain").status(), 200);
    let page = client
        .get(format!("http://{listen}/page"))
        .header("sec-fetch-mode", "navigate")
        .header("accept", "text/html")
        .send()
        .await;
    assert_eq!(page.expect("GET /page").status(), 200);
}

#[tokio::test]
async fn text_logs_in_a_pipe_are_plain_and_readable() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = gateway_config(&dir, &upstream, "");
    // stderr is a pipe here, and `log.color` is the default `auto`.
    let mut gate = Gate::spawn(&["--config", path_str(&file)], &[]);
    let listen: SocketAddr = gate
        .stderr_line("`sessiongate started` line", |line| {
            if !line.contains("sessiongate started") {
                return None;
            }
            line.split("listen=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .await;
    traffic(listen).await;
    gate.stderr_line("a `session started` line", |line| {
        line.contains("session started").then_some(())
    })
    .await;
    gate.signal(libc::SIGTERM);
    let exit = gate.exit_within(WAIT).await;
    assert!(exit.success(), "{exit}\n{}", gate.transcript());
    // The reader task may still hold the last lines.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = gate.transcript();
    let log = log.split("--- stderr ---").nth(1).unwrap_or_default();

    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a pipe:\n{log}"
    );
    for debug in ["Some(", "None", "=Tab", "=Browser", "=Active", "=Warning"] {
        assert!(
            !log.contains(debug),
            "debug formatting {debug:?} in:\n{log}"
        );
    }
    assert!(log.contains(" mode=tab"), "{log}");
    assert!(log.contains(" route=proxy status=200 elapsed_ms="), "{log}");
    let started = log
        .lines()
        .find(|l| l.contains("session started"))
        .expect("a session started line");
    assert!(
        !started.contains("parent="),
        "an absent parent is left out: {started}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("listener closed") && l.contains(" address=127.0.0.1:")),
        "{log}"
    );
    let mut answered = 0;
    for line in log.lines().filter(|l| l.contains("answered")) {
        let elapsed = line
            .split("elapsed_ms=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_else(|| panic!("no elapsed_ms in {line}"));
        let decimals = elapsed.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(
            decimals <= 3 && elapsed.parse::<f64>().is_ok(),
            "elapsed_ms={elapsed}"
        );
        answered += 1;
    }
    assert_eq!(answered, 2, "{log}");
}

#[tokio::test]
async fn log_color_always_colours_and_json_keeps_its_shape() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();

    let file = gateway_config(&dir, &upstream, "");
    let mut gate = Gate::spawn(
        &["--config", path_str(&file)],
        &[("SESSIONGATE_LOG__COLOR", "always")],
    );
    let line = gate
        .stderr_line("`sessiongate started` line", |line| {
            line.contains("sessiongate started")
                .then(|| line.to_owned())
        })
        .await;
    assert!(line.contains("\u{1b}["), "log.color = always: {line:?}");
    drop(gate);

    let file = gateway_config(
        &dir,
        &upstream,
        "[log]\nformat = \"json\"\ncolor = \"always\"\n",
    );
    let mut gate = Gate::spawn(&["--config", path_str(&file)], &[]);
    let listen = gate.listen_addr().await;
    traffic(listen).await;
    let answered = gate
        .stderr_line("a JSON `answered` event", |line| {
            assert!(!line.contains('\u{1b}'), "JSON is never coloured: {line:?}");
            let event: serde_json::Value = serde_json::from_str(line).ok()?;
            (event["fields"]["message"] == "answered").then_some(event)
        })
        .await;
    assert!(answered["fields"]["elapsed_ms"].is_f64(), "{answered}");
    assert_eq!(answered["fields"]["status"], 200, "{answered}");
    assert_eq!(answered["span"]["name"], "request", "{answered}");
    assert_eq!(answered["span"]["method"], "GET", "{answered}");
    let started = gate
        .stderr_line("a JSON `session started` event", |line| {
            json_event(line, "session started")
        })
        .await;
    assert!(started.get("parent").is_none(), "{started}");
    assert!(started["session"].is_string(), "{started}");
}

// ---------------------------------------------------------------------------------
// Duration errors
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn duration_errors_say_what_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        "[session]\ntimeout = \"soon\"\ncountdown = \"10 minuts\"\n",
    );
    let name = path_str(&file);
    let out = run_to_end(
        &["check", "--config", name],
        &[("SESSIONGATE_SESSION__ABANDON", "-5s")],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{out}");
    let accepted = r#"expected a duration like "90s", "5m" or "1h" (or whole seconds)"#;
    for line in [
        format!("  {name}: session.timeout: invalid duration \"soon\": {accepted}"),
        format!(
            "  {name}: session.countdown: invalid duration \"10 minuts\": unknown unit \
             \"minuts\" (use ms, s, m, h or d); {accepted}"
        ),
        format!(
            "  environment SESSIONGATE_SESSION__ABANDON: session.abandon: invalid duration \
             \"-5s\": negative values are not allowed; {accepted}"
        ),
    ] {
        assert!(
            out.stderr.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        );
    }
}

/// A countdown under 20 s works, but `check` says it may be too short to react to
/// (WCAG 2.2.1); a long enough one gets no warning.
#[tokio::test]
async fn check_warns_about_a_countdown_under_20_seconds() {
    let out = run_to_end(&["check"], &[("SESSIONGATE_SESSION__COUNTDOWN", "10s")]).await;
    assert!(out.status.success(), "a warning is not an error: {out}");
    assert!(
        out.stderr
            .contains("sessiongate: warning: session.countdown: 10s is under 20s")
            && out.stderr.contains("WCAG 2.2.1"),
        "{out}"
    );
    let out = run_to_end(&["check"], &[("SESSIONGATE_SESSION__COUNTDOWN", "20s")]).await;
    assert!(out.status.success(), "{out}");
    assert!(!out.stderr.contains("warning"), "{out}");
}
