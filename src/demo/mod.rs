//! The bundled "legacy" demo app that `sessiongate demo` starts on a loopback port
//! behind the gateway.
//!
//! It stands in for the unmodified backend sessiongate is made for: a plain HTTP/1.1
//! server with server-rendered pages and no session code of its own. The only thing
//! it knows about sessiongate is the name of the request header that carries the
//! session handle; it keys all of its per-user state (a visit counter, notes, an
//! API counter) on that value. Requests without the header get pages that say so
//! and use no state: through the gateway that means the request has no session
//! yet; without the gateway's forwarding headers, that it did not come through it.
//!
//! One page does it the other way, as most legacy apps do: `/cookie` (the "cookie
//! counter") keys a visit counter on a cookie of its own, `PHPSESSID`, like a PHP app
//! with `session_start()`. The browser shares that cookie across tabs, so all tabs
//! count together — unless the gateway keeps it per session
//! (`upstream.cookie_jar = "builtin"`), when every tab counts alone.
//!
//! Routes: `GET /`, `GET /about`, `GET|POST /cookie`, `POST /notes`, `POST /api/counter`,
//! `POST /hooks/{start,timeout,end}` (logged and counted, answered with `{}`; the
//! About page shows the counts), 404 otherwise.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agent::escape_html;

/// Sessions the app remembers at once; past this the least recently seen one is
/// forgotten, so a client inventing handles cannot grow memory without bound.
const MAX_SESSIONS: usize = 10_000;
/// Notes kept per session (the oldest is dropped first).
const MAX_NOTES: usize = 20;
/// Characters kept of one note.
const MAX_NOTE_CHARS: usize = 200;
/// Handles longer than this are not used as keys (the gateway sends 36-char UUIDs).
const MAX_HANDLE_LEN: usize = 128;
/// Largest `POST /notes` body.
const MAX_FORM_BYTES: usize = 4 * 1024;
/// Largest hook body; the gateway's hook payloads are a few hundred bytes.
const MAX_HOOK_BYTES: usize = 16 * 1024;
/// A client must send its whole request head within this time.
/// The cookie the cookie counter keys its state on (PHP's name for its own).
const COOKIE: &str = "PHPSESSID";
/// Longest `PHPSESSID` value used as a key (the app's own are 32 hex digits).
const MAX_COOKIE_ID: usize = 64;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests before dropping connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors) to avoid spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const LAYOUT: &str = include_str!("layout.html");
const STYLE: &str = include_str!("style.css");
const HOME: &str = include_str!("home.html");
const ABOUT: &str = include_str!("about.html");

/// Serves the demo app on `listener` until `shutdown` is cancelled.
///
/// `session_header` is the request header that carries the session handle (the
/// gateway's `upstream.header`). On shutdown the listener is closed at once, idle
/// connections are closed, and requests in flight get up to 5 s to finish.
pub async fn serve(listener: TcpListener, session_header: HeaderName, shutdown: CancellationToken) {
    let app = Arc::new(App::new(session_header, MAX_SESSIONS));
    // A JoinSet rather than detached tasks: dropping it at the end aborts any
    // connection that outlived the drain timeout, so `serve` returning means the
    // app is really gone.
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(%err, "demo app: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set does not grow with every accept.
        while connections.try_join_next().is_some() {}

        let app = Arc::clone(&app);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%err, %peer, "demo app: connection ended with an error");
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "demo app: dropping connections still busy after the drain timeout"
        );
    }
}

/// What the app remembers about one session.
#[derive(Debug)]
struct SessionState {
    /// `GET /` loads.
    visits: u64,
    /// `POST /api/counter` calls.
    api_count: u64,
    notes: VecDeque<String>,
    /// For picking a victim when the table is full.
    last_seen: Instant,
}

impl SessionState {
    fn new() -> Self {
        SessionState {
            visits: 0,
            api_count: 0,
            notes: VecDeque::new(),
            last_seen: Instant::now(),
        }
    }
}

/// The per-session state table, bounded to `capacity` entries.
#[derive(Debug)]
struct Sessions {
    map: DashMap<String, SessionState>,
    capacity: usize,
}

impl Sessions {
    fn new(capacity: usize) -> Self {
        Sessions {
            map: DashMap::new(),
            capacity,
        }
    }

    /// Runs `f` on the state of `handle`, creating it if needed.
    fn update<R>(&self, handle: &str, f: impl FnOnce(&mut SessionState) -> R) -> R {
        if !self.map.contains_key(handle) {
            self.make_room();
        }
        // No other DashMap call may happen while `entry` is held: it locks a shard.
        let mut entry = self
            .map
            .entry(handle.to_owned())
            .or_insert_with(SessionState::new);
        entry.last_seen = Instant::now();
        f(&mut entry)
    }

    /// Runs `f` on the state of `handle` if there is any, without creating it.
    fn read<R>(&self, handle: &str, f: impl FnOnce(&SessionState) -> R) -> Option<R> {
        self.map.get(handle).map(|entry| f(&entry))
    }

    /// Forgets least recently seen sessions until one more fits. The scan is
    /// linear, but it only runs when the table is full.
    fn make_room(&self) {
        while self.map.len() >= self.capacity {
            // The iterator (and its shard locks) is dropped at the end of this
            // statement, before `remove` locks a shard for writing.
            let victim = self
                .map
                .iter()
                .min_by_key(|entry| entry.last_seen)
                .map(|entry| entry.key().clone());
            match victim {
                Some(handle) => {
                    self.map.remove(&handle);
                }
                None => break,
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

type Resp = Response<Full<Bytes>>;

/// Hook calls received from the gateway, over all sessions.
#[derive(Debug, Default)]
struct HookCounts {
    start: AtomicU64,
    timeout: AtomicU64,
    end: AtomicU64,
}

impl HookCounts {
    fn counter(&self, name: &str) -> &AtomicU64 {
        match name {
            "start" => &self.start,
            "timeout" => &self.timeout,
            _ => &self.end,
        }
    }
}

struct App {
    header: HeaderName,
    sessions: Sessions,
    /// The cookie counter's state, by `PHPSESSID` (bounded like `sessions`).
    cookie_sessions: Sessions,
    hooks: HookCounts,
}

/// How a request without a session handle reached the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// With the gateway's `X-Forwarded-For`: sessiongate forwarded it without a
    /// session (in tab mode, a request that is neither a page load nor sent by the
    /// agent, e.g. a plain `curl`).
    Gateway,
    /// Straight to the app's port.
    Direct,
}

impl App {
    fn new(header: HeaderName, capacity: usize) -> Self {
        App {
            header,
            sessions: Sessions::new(capacity),
            cookie_sessions: Sessions::new(capacity),
            hooks: HookCounts::default(),
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let handle = self.session_handle(&req);
        // The gateway always sets X-Forwarded-For (it replaces or appends to it).
        let arrival = if req.headers().contains_key("x-forwarded-for") {
            Arrival::Gateway
        } else {
            Arrival::Direct
        };
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        match (&method, path.as_str()) {
            (&Method::GET, "/") => self.home(handle.as_deref(), arrival),
            (&Method::GET, "/about") => self.about(handle.as_deref(), arrival),
            (&Method::GET | &Method::POST, "/cookie") => self.cookie_counter(&req, handle),
            (&Method::POST, "/notes") => self.add_note(handle.as_deref(), req).await,
            (&Method::POST, "/api/counter") => self.api_counter(handle),
            (&Method::POST, "/hooks/start" | "/hooks/timeout" | "/hooks/end") => {
                self.hook(&path["/hooks/".len()..], handle.as_deref(), req)
                    .await
            }
            (_, "/" | "/about") => method_not_allowed("GET"),
            (_, "/cookie") => method_not_allowed("GET, POST"),
            (_, "/notes" | "/api/counter" | "/hooks/start" | "/hooks/timeout" | "/hooks/end") => {
                method_not_allowed("POST")
            }
            _ => self.not_found(&path),
        }
    }

    /// The session handle, if the request carries a usable one. A value that is
    /// not visible ASCII, or implausibly long, is treated as absent rather than
    /// used as a key.
    fn session_handle<B>(&self, req: &Request<B>) -> Option<String> {
        let value = req.headers().get(&self.header)?.to_str().ok()?.trim();
        (!value.is_empty() && value.len() <= MAX_HANDLE_LEN).then(|| value.to_owned())
    }

    fn home(&self, handle: Option<&str>, arrival: Arrival) -> Resp {
        let (visits, notes, api_count) = match handle {
            Some(h) => self.sessions.update(h, |s| {
                s.visits += 1;
                (s.visits.to_string(), notes_html(&s.notes), s.api_count)
            }),
            None => (
                "not counted (no session)".to_owned(),
                "<p class=\"muted\">Without a session there is nowhere to keep notes.</p>"
                    .to_owned(),
                0,
            ),
        };
        // The server's count, so a reload shows where the session stands.
        let count = match api_count {
            0 => "not clicked yet".to_owned(),
            n => format!("count = {n}"),
        };
        let body = fill(
            HOME,
            &[
                ("header", &self.header_display()),
                ("session", &self.session_html(handle, arrival)),
                ("visits", &visits),
                ("notes", &notes),
                ("count", &count),
            ],
        );
        html(StatusCode::OK, self.page("Legacy demo app", &body))
    }

    /// The cookie counter: a visit counter keyed on the app's own `PHPSESSID`
    /// cookie, handed out on the first visit, as PHP's `session_start()` does.
    fn cookie_counter<B>(&self, req: &Request<B>, handle: Option<String>) -> Resp {
        let known = cookie_value(req.headers(), COOKIE).filter(|id| {
            id.len() <= MAX_COOKIE_ID && id.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        let (id, fresh) = match known {
            Some(id) => (id, false),
            None => (uuid::Uuid::new_v4().simple().to_string(), true),
        };
        let count = self.cookie_sessions.update(&id, |s| {
            s.visits += 1;
            s.visits
        });
        let handle = match handle {
            Some(h) => format!("<code class=\"handle\">{}</code>", escape_html(&h)),
            None => "none".to_owned(),
        };
        let body = format!(
            "<h1>Cookie counter</h1>\n\
             <p>This page works like a PHP app with <code>session_start()</code>: it \
             keeps its count under its own cookie, <code>{COOKIE}</code>, not under the \
             gateway's session. The browser shares that cookie with every tab, so without \
             the gateway's cookie jar all tabs count together. With \
             <code>upstream.cookie_jar = \"builtin\"</code> the gateway keeps \
             <code>{COOKIE}</code> per session instead, and each tab counts alone.</p>\n\
             <p class=\"count\">Count in this {COOKIE}: <strong id=\"cookie-count\">{count}</strong></p>\n\
             <p>{COOKIE}: <code id=\"cookie-id\">{id}</code>{new}<br>Gateway session: {handle}</p>\n\
             <form method=\"post\" action=\"/cookie\"><button type=\"submit\">Count by form POST</button></form>\n\
             <nav><a href=\"/cookie\">Count by link</a> · <a href=\"/\">← Back to the home page</a></nav>",
            new = if fresh { " (new)" } else { "" },
        );
        let mut resp = html(
            StatusCode::OK,
            self.page("Cookie counter — Legacy demo app", &body),
        );
        if fresh {
            if let Ok(value) = HeaderValue::from_str(&format!("{COOKIE}={id}; Path=/; HttpOnly")) {
                resp.headers_mut().insert(http::header::SET_COOKIE, value);
            }
        }
        resp
    }

    fn about(&self, handle: Option<&str>, arrival: Arrival) -> Resp {
        let visits = match handle {
            Some(h) => self.sessions.read(h, |s| s.visits).unwrap_or(0).to_string(),
            None => "— (no session)".to_owned(),
        };
        let calls = |name| self.hooks.counter(name).load(Ordering::Relaxed).to_string();
        let body = fill(
            ABOUT,
            &[
                ("header", &self.header_display()),
                ("session", &self.session_html(handle, arrival)),
                ("visits", &visits),
                ("hook_start", &calls("start")),
                ("hook_timeout", &calls("timeout")),
                ("hook_end", &calls("end")),
            ],
        );
        html(StatusCode::OK, self.page("About — Legacy demo app", &body))
    }

    async fn add_note(&self, handle: Option<&str>, req: Request<Incoming>) -> Resp {
        let body = match read_body(req.into_body(), MAX_FORM_BYTES).await {
            Ok(body) => body,
            Err(resp) => return resp,
        };
        // Without a session the note has nowhere to go; the home page says so.
        if let (Some(h), Some(note)) = (handle, form_field(&body, "note")) {
            let note: String = note.trim().chars().take(MAX_NOTE_CHARS).collect();
            if !note.is_empty() {
                self.sessions.update(h, |s| {
                    if s.notes.len() >= MAX_NOTES {
                        s.notes.pop_front();
                    }
                    s.notes.push_back(note);
                });
            }
        }
        // Post/Redirect/Get, so a reload does not submit the note again.
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SEE_OTHER;
        resp.headers_mut()
            .insert(LOCATION, HeaderValue::from_static("/"));
        resp
    }

    fn api_counter(&self, handle: Option<String>) -> Resp {
        let count = match handle.as_deref() {
            Some(h) => self.sessions.update(h, |s| {
                s.api_count += 1;
                s.api_count
            }),
            None => 0,
        };
        json(
            StatusCode::OK,
            &serde_json::json!({ "session": handle, "count": count }),
        )
    }

    fn not_found(&self, path: &str) -> Resp {
        let body = format!(
            "<h1>Not found</h1>\n<p>There is no page at <code>{}</code>.</p>\n\
             <nav><a href=\"/\">← Back to the home page</a></nav>",
            escape_html(path)
        );
        html(
            StatusCode::NOT_FOUND,
            self.page("Not found — Legacy demo app", &body),
        )
    }

    fn session_html(&self, handle: Option<&str>, arrival: Arrival) -> String {
        match (handle, arrival) {
            (Some(h), _) => format!(
                "<p>Session handle: <code class=\"handle\">{}</code></p>",
                escape_html(h)
            ),
            (None, Arrival::Gateway) => format!(
                "<p class=\"notice\"><strong>No session on this request yet.</strong> It \
                 came through sessiongate without a <code>{}</code> header. In \
                 <code>tab</code> mode (the default) a session belongs to a browser tab: a \
                 browser gets one on its first page load, and the gateway's script carries \
                 it on every later request (a reload of a tab that has one passes through a \
                 short bootstrap page first). A client without JavaScript, such as \
                 <code>curl</code>, has no session unless it asks for a page \
                 (<code>-H 'Accept: text/html'</code>: a new session every time) — or run \
                 the demo with <code>SESSIONGATE_SESSION__MODE=browser</code> and keep \
                 cookies (<code>curl -c jar -b jar</code>).</p>",
                self.header_display()
            ),
            (None, Arrival::Direct) => format!(
                "<p class=\"warning\"><strong>No <code>{}</code> header on this request \
                 — are you bypassing the gateway?</strong> Open the app at the address \
                 sessiongate printed when it started, not at this port.</p>",
                self.header_display()
            ),
        }
    }

    /// Logs and counts a hook call from the gateway and answers `{}` (not handled).
    async fn hook(&self, name: &str, handle: Option<&str>, req: Request<Incoming>) -> Resp {
        let body = match read_body(req.into_body(), MAX_HOOK_BYTES).await {
            Ok(body) => body,
            Err(resp) => return resp,
        };
        let calls = self.hooks.counter(name).fetch_add(1, Ordering::Relaxed) + 1;
        let payload = String::from_utf8_lossy(&body);
        // An absent handle leaves the field out rather than logging a placeholder.
        tracing::info!(
            hook = %name,
            session = handle,
            calls,
            %payload,
            "demo app: sessiongate hook called"
        );
        json(StatusCode::OK, &serde_json::json!({}))
    }

    /// Wraps a page body in the shared layout.
    fn page(&self, title: &str, body: &str) -> String {
        fill(
            LAYOUT,
            &[
                ("title", title),
                ("style", STYLE),
                ("header", &self.header_display()),
                ("body", body),
            ],
        )
    }

    /// The header name as people write it (`X-Session`); `HeaderName` is lowercase.
    fn header_display(&self) -> String {
        self.header
            .as_str()
            .split('-')
            .map(|word| {
                let mut chars = word.chars();
                match chars.next() {
                    Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                    None => String::new(),
                }
            })
            .collect::<Vec<_>>()
            .join("-")
    }
}

/// Reads a whole request body of at most `limit` bytes, or says why not.
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Resp> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
        )),
        Err(_) => Err(text(
            StatusCode::BAD_REQUEST,
            "could not read the request body\n",
        )),
    }
}

/// The first value of cookie `name` in the request's `Cookie` headers.
fn cookie_value(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| line.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
}

/// The first value of `name` in an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let body = String::from_utf8_lossy(body);
    body.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(key) == name).then(|| form_decode(value))
    })
}

/// Decodes one form component: `+` is a space, then percent-escapes.
fn form_decode(component: &str) -> String {
    let spaced = component.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

fn notes_html(notes: &VecDeque<String>) -> String {
    if notes.is_empty() {
        return "<p class=\"muted\">No notes yet.</p>".to_owned();
    }
    let items: String = notes
        .iter()
        .map(|note| format!("\n    <li>{}</li>", escape_html(note)))
        .collect();
    format!("<ol class=\"notes\">{items}\n  </ol>")
}

/// Replaces each `{{name}}` in `template` with its value, in one pass, so text
/// inside a value (user input included) is never treated as a placeholder.
fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            rest = &rest[start..];
            break;
        };
        let name = &after[..end];
        match vars.iter().find(|(key, _)| *key == name) {
            Some((_, value)) => out.push_str(value),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

fn html(status: StatusCode, page: String) -> Resp {
    // Pages show per-session counters; a cached copy would show stale ones.
    with_type(status, page, "text/html; charset=utf-8", true)
}

fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    with_type(status, value.to_string(), "application/json", true)
}

fn text(status: StatusCode, message: &'static str) -> Resp {
    with_type(
        status,
        message.to_owned(),
        "text/plain; charset=utf-8",
        false,
    )
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

fn with_type(status: StatusCode, body: String, content_type: &'static str, no_store: bool) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if no_store {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use std::net::SocketAddr;

    struct Demo {
        addr: SocketAddr,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(header: &'static str) -> Demo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            HeaderName::from_static(header),
            shutdown.clone(),
        ));
        Demo {
            addr,
            shutdown,
            task,
        }
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: String,
    }

    async fn send(
        demo: &Demo,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", demo.addr, path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    async fn get(demo: &Demo, path: &str, session: Option<&str>) -> Reply {
        let headers: Vec<_> = session.map(|s| ("x-session", s)).into_iter().collect();
        send(demo, Method::GET, path, &headers, "").await
    }

    async fn counter(demo: &Demo, session: Option<&str>) -> serde_json::Value {
        let headers: Vec<_> = session.map(|s| ("x-session", s)).into_iter().collect();
        let reply = send(demo, Method::POST, "/api/counter", &headers, "").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers[CONTENT_TYPE], "application/json");
        serde_json::from_str(&reply.body).unwrap()
    }

    async fn post_note(demo: &Demo, session: &str, form: &str) -> Reply {
        let headers = [
            ("x-session", session),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        send(demo, Method::POST, "/notes", &headers, form).await
    }

    #[tokio::test]
    async fn the_cookie_counter_keys_on_its_own_cookie() {
        let demo = start("x-session").await;
        let first = get(&demo, "/cookie", None).await;
        assert_eq!(first.status, StatusCode::OK);
        let set = first.headers["set-cookie"].to_str().unwrap().to_owned();
        assert!(
            set.starts_with("PHPSESSID=") && set.contains("HttpOnly"),
            "{set}"
        );
        assert!(first
            .body
            .contains("<strong id=\"cookie-count\">1</strong>"));
        let pair = set.split(';').next().unwrap().to_owned();
        let headers = [("cookie", pair.as_str())];
        let again = send(&demo, Method::POST, "/cookie", &headers, "").await;
        assert!(again.headers.get("set-cookie").is_none());
        assert!(again
            .body
            .contains("<strong id=\"cookie-count\">2</strong>"));
        // Another cookie (or an unusable one) counts on its own.
        let other = send(
            &demo,
            Method::GET,
            "/cookie",
            &[("cookie", "PHPSESSID=<x>")],
            "",
        )
        .await;
        assert!(other
            .body
            .contains("<strong id=\"cookie-count\">1</strong>"));
        assert!(!other.body.contains("<x>"));
    }

    #[tokio::test]
    async fn counters_are_kept_per_session() {
        let demo = start("x-session").await;

        let first = get(&demo, "/", Some("alpha")).await;
        assert_eq!(first.status, StatusCode::OK);
        assert!(first.body.contains("<title>Legacy demo app</title>"));
        assert!(first.body.contains("<code class=\"handle\">alpha</code>"));
        assert!(first.body.contains("<strong>1</strong>"));
        assert!(get(&demo, "/", Some("alpha"))
            .await
            .body
            .contains("<strong>2</strong>"));

        // The about page shows the counter without incrementing it.
        let about = get(&demo, "/about", Some("alpha")).await;
        assert!(about.body.contains("<strong>2</strong>"));
        assert!(about.body.contains("href=\"/\""));
        assert!(get(&demo, "/", Some("alpha"))
            .await
            .body
            .contains("<strong>3</strong>"));
        assert!(get(&demo, "/", Some("beta"))
            .await
            .body
            .contains("<strong>1</strong>"));

        let json = |s: &str, n: u64| serde_json::json!({ "session": s, "count": n });
        assert_eq!(counter(&demo, Some("alpha")).await, json("alpha", 1));
        assert_eq!(counter(&demo, Some("alpha")).await, json("alpha", 2));
        assert_eq!(counter(&demo, Some("beta")).await, json("beta", 1));
        assert_eq!(
            counter(&demo, None).await,
            serde_json::json!({ "session": null, "count": 0 })
        );
    }

    #[tokio::test]
    async fn notes_are_escaped_truncated_and_bounded() {
        let demo = start("x-session").await;

        let reply = post_note(&demo, "n1", "note=%3Cb%3Ehi%3C%2Fb%3E+%26+bye").await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER);
        assert_eq!(reply.headers[LOCATION], "/");
        let page = get(&demo, "/", Some("n1")).await.body;
        assert!(page.contains("<li>&lt;b&gt;hi&lt;/b&gt; &amp; bye</li>"));
        assert!(!page.contains("<b>hi"));

        // Another session does not see it.
        assert!(get(&demo, "/", Some("n2"))
            .await
            .body
            .contains("No notes yet."));

        // Long notes are cut to 200 characters.
        let long = "é".repeat(300);
        post_note(&demo, "n3", &format!("note={long}")).await;
        let page = get(&demo, "/", Some("n3")).await.body;
        assert!(page.contains(&format!("<li>{}</li>", "é".repeat(200))));

        // Only the latest 20 notes are kept.
        for i in 0..25 {
            post_note(&demo, "n4", &format!("note=number+{i}")).await;
        }
        let page = get(&demo, "/", Some("n4")).await.body;
        assert_eq!(page.matches("<li>").count(), 20);
        assert!(!page.contains("<li>number 4</li>"));
        assert!(page.contains("<li>number 5</li>"));
        assert!(page.contains("<li>number 24</li>"));

        let huge = format!("note={}", "x".repeat(MAX_FORM_BYTES + 1));
        let reply = post_note(&demo, "n5", &huge).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn pages_without_the_configured_header_say_so() {
        let demo = start("x-app-session").await;

        // The default header name means nothing when another one is configured.
        let page = get(&demo, "/", Some("ignored")).await.body;
        assert!(page.contains("are you bypassing the gateway?"));
        assert!(page.contains("<code>X-App-Session</code>"));
        assert!(!page.contains("ignored"));

        let headers = [("x-app-session", "<script>")];
        let page = send(&demo, Method::GET, "/", &headers, "").await.body;
        assert!(page.contains("<code class=\"handle\">&lt;script&gt;</code>"));
    }

    #[tokio::test]
    async fn through_the_gateway_without_a_session_the_page_explains() {
        let demo = start("x-session").await;
        // What the gateway forwards for a plain `curl` in tab mode: its forwarding
        // headers, no session header.
        let headers = [("x-forwarded-for", "127.0.0.1")];
        for path in ["/", "/about"] {
            let page = send(&demo, Method::GET, path, &headers, "").await.body;
            assert!(page.contains("No session on this request yet."), "{page}");
            assert!(page.contains("Accept: text/html"), "{page}");
            assert!(!page.contains("bypassing"), "{path}: {page}");
        }
        // Straight to the app's port: that is a bypass, and the page says so.
        let page = get(&demo, "/", None).await.body;
        assert!(page.contains("are you bypassing the gateway?"));
    }

    #[tokio::test]
    async fn the_count_widget_starts_from_the_server_count() {
        let demo = start("x-session").await;
        let page = get(&demo, "/", Some("c1")).await.body;
        assert!(page.contains(">not clicked yet</output>"), "{page}");
        counter(&demo, Some("c1")).await;
        counter(&demo, Some("c1")).await;
        // A reload shows the count the server kept, not "not clicked yet".
        let page = get(&demo, "/", Some("c1")).await.body;
        assert!(page.contains(">count = 2</output>"), "{page}");
        let page = get(&demo, "/", Some("c2")).await.body;
        assert!(page.contains(">not clicked yet</output>"), "{page}");
    }

    #[tokio::test]
    async fn hook_calls_are_counted_on_the_about_page() {
        let demo = start("x-session").await;
        let about = get(&demo, "/about", Some("h1")).await.body;
        assert!(
            about.contains(
                "start <strong>0</strong>,\n  timeout <strong>0</strong>, end <strong>0</strong>"
            ),
            "{about}"
        );
        let headers = [("x-session", "h1"), ("content-type", "application/json")];
        for hook in ["start", "end", "end"] {
            let reply = send(
                &demo,
                Method::POST,
                &format!("/hooks/{hook}"),
                &headers,
                "{}",
            )
            .await;
            assert_eq!(reply.status, StatusCode::OK);
        }
        let about = get(&demo, "/about", Some("h1")).await.body;
        assert!(
            about.contains(
                "start <strong>1</strong>,\n  timeout <strong>0</strong>, end <strong>2</strong>"
            ),
            "{about}"
        );
    }

    #[tokio::test]
    async fn hooks_404_and_405() {
        let demo = start("x-session").await;

        let body = r#"{"event":"end","session":"h1","reason":"timeout"}"#;
        let headers = [("x-session", "h1"), ("content-type", "application/json")];
        let reply = send(&demo, Method::POST, "/hooks/end", &headers, body).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "{}");

        let reply = get(&demo, "/missing?x=1", None).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert!(reply.body.contains("<code>/missing</code>"));

        let reply = get(&demo, "/notes", None).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(reply.headers[ALLOW], "POST");
    }

    #[tokio::test]
    async fn shutdown_stops_serving() {
        let demo = start("x-session").await;
        // An idle keep-alive connection must not hold shutdown up for the drain
        // timeout: the client below keeps its pooled connection open.
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let uri: http::Uri = format!("http://{}/", demo.addr).parse().unwrap();
        let resp = client.get(uri).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();

        demo.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), demo.task)
            .await
            .expect("serve returns promptly after shutdown")
            .unwrap();
        assert!(tokio::net::TcpStream::connect(demo.addr).await.is_err());
    }

    #[test]
    fn session_table_is_bounded() {
        let sessions = Sessions::new(3);
        for handle in ["a", "b", "c"] {
            sessions.update(handle, |s| s.visits += 1);
            std::thread::sleep(Duration::from_millis(2));
        }
        sessions.update("a", |s| s.visits += 1); // "b" is now the least recently seen
        sessions.update("d", |s| s.visits += 1);
        assert_eq!(sessions.len(), 3);
        assert_eq!(sessions.read("b", |s| s.visits), None);
        assert_eq!(sessions.read("a", |s| s.visits), Some(2));
    }

    #[test]
    fn fill_does_not_rescan_values() {
        let out = fill("{{a}} {{b}} {{c}}", &[("a", "{{b}}"), ("b", "B")]);
        assert_eq!(out, "{{b}} B {{c}}");
    }
}
