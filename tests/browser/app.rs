//! A small legacy web app for the browser tests: it knows nothing about sessiongate
//! except that it reads the `X-Session` (and `X-Session-Parent`) request headers and
//! renders them into every page, the way a legacy backend keys its state on them.
//!
//! Every request is recorded ([`Hit`]). Routes:
//!
//! | route | answer |
//! |---|---|
//! | `/`, `/page` | the main page: session spans, a link, a GET form, a POST form, buttons for fetch, XHR, WebSocket and `window.open` |
//! | `POST /submit` | a page echoing the posted `field` in `#posted` |
//! | `/echo` | JSON `{session, parent, method, path}` of this request |
//! | `/ws` | WebSocket: first message `{"session": ...}`, then echoes text |
//! | `/app.js` | the app's own external script (wires the buttons, sets `#script-ran`) |
//! | `/csp-self` | `Content-Security-Policy: script-src 'self'` page using `/app.js` |
//! | `/csp-nonce` | `script-src 'nonce-abc'` page with a nonce'd inline script and `/app.js` |
//! | `/gzip` | the same kind of page, `Content-Encoding: gzip` |
//! | `/nohead` | `<html><body>…` with no `<head>` |
//! | `/big` | [`BIG_LEN`] bytes of HTML in 64 KiB chunks, 10 ms apart; [`App::big_finished`] says when the last chunk was handed over |
//! | `/de` | the main page in German (`<html lang="de">`) |
//! | `/partials` | a page whose script fetches `/fragment` and `/json-html` into `window.__partials` |
//! | `/fragment`, `/json-html` | [`FRAGMENT`] and [`JSON_AS_HTML`], both `text/html` |
//! | `/sse` | a page with an `EventSource` on `/events`, its messages in `window.__events` |
//! | `/events` | `text/event-stream`: one event with the request's `X-Session`, then the stream ends (the browser reconnects) |
//! | `/shadow` | POST forms to `/submit` inside open shadow roots, one made by script, one declarative |
//! | `/favicon.ico` | 204 |
//!
//! Every page carries `#handle`, `#parent`, `#method`, `#path` and `#seq` (the
//! request's number, unique per page load) except `/big`, which is static.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Size of `/big`: 5 MiB.
pub const BIG_LEN: usize = 5 * 1024 * 1024;
const BIG_CHUNK: usize = 64 * 1024;
const BIG_PAUSE: Duration = Duration::from_millis(10);

/// The posted value of the POST form's `field` (the form's HTML escapes it).
pub const POST_FIELD: &str = "Grüße & <b>\"quotes\"</b> + 100%";
/// The posted value of the POST form's `notes` textarea (browsers send CRLF).
pub const POST_NOTES: &str = "line 1\r\nline 2";
/// Text of `#text` on `/gzip` and `/nohead`.
pub const GZIP_TEXT: &str = "Compressed page — ünïcödé ✓";
pub const NOHEAD_TEXT: &str = "A page without a head — ünïcödé ✓";
/// What `/fragment` answers (`text/html`): a partial, as jQuery `.load()` gets it.
pub const FRAGMENT: &str = "<li class=\"row\">loaded later — ✓</li>\n";
/// What `/json-html` answers: JSON mislabelled `text/html`.
pub const JSON_AS_HTML: &str = "{\"ok\":true}";

/// One request as the app received it.
#[derive(Clone, Debug)]
pub struct Hit {
    pub seq: u64,
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    /// `X-Session`, if the request had one.
    pub session: Option<String>,
    /// `X-Session-Parent`, if the request had one.
    pub parent: Option<String>,
    pub body: Bytes,
    /// Every header, lowercase names.
    pub headers: Vec<(String, String)>,
}

impl Hit {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }
}

struct Shared {
    hits: Mutex<Vec<Hit>>,
    seq: AtomicU64,
    big_finished: AtomicBool,
}

/// The running app; dropping it stops it.
pub struct App {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl App {
    pub async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test app");
        let addr = listener.local_addr().expect("test app address");
        let shared = Arc::new(Shared {
            hits: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
            big_finished: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop.clone()));
        App { addr, shared, stop }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, oldest first.
    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }

    /// The request that rendered page number `seq`.
    pub fn hit(&self, seq: u64) -> Hit {
        self.hits()
            .into_iter()
            .find(|h| h.seq == seq)
            .unwrap_or_else(|| panic!("the app recorded no request #{seq}"))
    }

    /// Whether `/big` has handed its last chunk to the server.
    pub fn big_finished(&self) -> bool {
        self.shared.big_finished.load(Ordering::SeqCst)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(req, &shared).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn handle(mut req: Request<Incoming>, shared: &Arc<Shared>) -> Response<AppBody> {
    let websocket = req.uri().path() == "/ws"
        && req
            .headers()
            .get("upgrade")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get("sec-websocket-key").cloned();
    let upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let hit = record(req, shared).await;

    if let (Some(upgrade), Some(key)) = (upgrade, key) {
        return websocket_accept(upgrade, &key, hit.session.clone());
    }
    match (hit.method.as_str(), hit.path()) {
        (_, "/" | "/page") => html(main_page(&hit)),
        ("POST", "/submit") => html(submit_page(&hit)),
        (_, "/echo") => {
            let body = serde_json::json!({
                "session": hit.session,
                "parent": hit.parent,
                "method": hit.method,
                "path": hit.uri,
            });
            let mut response = respond(StatusCode::OK, "application/json", body.to_string());
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        (_, "/app.js") => respond(StatusCode::OK, "text/javascript", APP_JS),
        (_, "/csp-self") => with_csp(html(csp_self_page(&hit)), "script-src 'self'"),
        (_, "/csp-nonce") => with_csp(html(csp_nonce_page(&hit)), "script-src 'nonce-abc'"),
        (_, "/gzip") => {
            let mut response = html(gzip(gzip_page(&hit).as_bytes()));
            response
                .headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            response
                .headers_mut()
                .insert("vary", HeaderValue::from_static("Accept-Encoding"));
            response
        }
        (_, "/nohead") => html(nohead_page(&hit)),
        (_, "/big") => big(shared),
        (_, "/de") => html(main_page_in(&hit, "de")),
        (_, "/partials") => html(partials_page(&hit)),
        (_, "/fragment") => html(FRAGMENT),
        (_, "/json-html") => html(JSON_AS_HTML),
        (_, "/sse") => html(sse_page(&hit)),
        (_, "/events") => respond(
            StatusCode::OK,
            "text/event-stream",
            format!(
                "retry: 200\ndata: {}\n\n",
                hit.session.as_deref().unwrap_or("")
            ),
        ),
        (_, "/shadow") => html(shadow_page(&hit)),
        // A `timeout` hook that keeps the session (Wisej's handled `SessionTimeout`).
        ("POST", "/hook/handled") => {
            respond(StatusCode::OK, "application/json", r#"{"handled": true}"#)
        }
        (_, "/favicon.ico") => respond(StatusCode::NO_CONTENT, "image/x-icon", ""),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found"),
    }
}

async fn record(req: Request<Incoming>, shared: &Shared) -> Hit {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let hit = Hit {
        seq: shared.seq.fetch_add(1, Ordering::SeqCst) + 1,
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.to_string(), |pq| pq.to_string()),
        session: header("x-session"),
        parent: header("x-session-parent"),
        body,
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    shared.hits.lock().unwrap().push(hit.clone());
    hit
}

/// Answers the WebSocket handshake; the socket reports its session, then echoes.
fn websocket_accept(
    upgrade: hyper::upgrade::OnUpgrade,
    key: &HeaderValue,
    session: Option<String>,
) -> Response<AppBody> {
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let hello = serde_json::json!({ "session": session }).to_string();
        if ws.send(Message::text(hello)).await.is_err() {
            return;
        }
        // Echo text until the page closes the socket (pings are answered by
        // tungstenite itself).
        while let Some(Ok(message)) = ws.next().await {
            let echoed = match message {
                Message::Text(text) => ws.send(Message::Text(text)).await,
                Message::Close(_) => return,
                _ => Ok(()),
            };
            if echoed.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .body(full(Bytes::new()))
        .unwrap()
}

/// The app's script: wires the buttons of the main page.
const APP_JS: &str = r#"(function () {
  "use strict";
  function show(id, value) {
    var el = document.getElementById(id);
    if (el) el.textContent = value;
  }
  function on(id, handler) {
    var el = document.getElementById(id);
    if (el) el.addEventListener("click", handler);
  }
  on("fetch", function () {
    fetch("/echo?via=fetch")
      .then(function (r) { return r.json(); })
      .then(function (j) { show("fetch-result", j.session || "(none)"); },
            function (e) { show("fetch-result", "error: " + e); });
  });
  on("xhr", function () {
    var xhr = new XMLHttpRequest();
    xhr.open("GET", "/echo?via=xhr");
    xhr.onload = function () { show("xhr-result", JSON.parse(xhr.responseText).session || "(none)"); };
    xhr.onerror = function () { show("xhr-result", "error"); };
    xhr.send();
  });
  on("ws", function () {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + location.host + "/ws");
    var first = true;
    ws.onmessage = function (m) {
      if (first) {
        first = false;
        show("ws-result", JSON.parse(m.data).session || "(none)");
        ws.send("ping from the page");
      } else {
        show("ws-echo", m.data);
        ws.close();
      }
    };
    ws.onerror = function () { show("ws-result", "error"); };
  });
  on("open-same", function () { window.open(location.href); });
  show("script-ran", "yes");
})();
"#;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The session block every page renders.
fn session_block(hit: &Hit) -> String {
    format!(
        r#"<p>X-Session: <span id="handle">{}</span></p>
<p>X-Session-Parent: <span id="parent">{}</span></p>
<p>Request <span id="seq">{}</span>: <span id="method">{}</span> <span id="path">{}</span></p>
<p>Page script ran: <span id="script-ran">no</span></p>
"#,
        escape(hit.session.as_deref().unwrap_or("")),
        escape(hit.parent.as_deref().unwrap_or("")),
        hit.seq,
        escape(&hit.method),
        escape(&hit.uri),
    )
}

/// A full page; `head` and `body` are inserted as they are.
fn document(title: &str, head: &str, hit: &Hit, body: &str) -> String {
    document_in("en", title, head, hit, body)
}

/// [`document`] in language `lang` (`<html lang>`).
fn document_in(lang: &str, title: &str, head: &str, hit: &Hit, body: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="icon" href="data:,">
{head}</head>
<body>
<h1>{title}</h1>
{session}{body}
</body>
</html>
"#,
        session = session_block(hit),
    )
}

fn main_page(hit: &Hit) -> String {
    main_page_in(hit, "en")
}

fn main_page_in(hit: &Hit, lang: &str) -> String {
    let body = format!(
        r#"<nav><a id="link" href="/page?via=link">a link</a></nav>
<form id="getform" method="get" action="/page">
  <input name="q" value="hello world"><input type="hidden" name="via" value="getform">
  <button id="getsubmit" type="submit">GET form</button>
</form>
<form id="postform" method="post" action="/submit">
  <input name="field" value="{field}">
  <textarea name="notes">{notes}</textarea>
  <button id="postsubmit" type="submit">POST form</button>
</form>
<p><button id="fetch">fetch</button> <span id="fetch-result"></span></p>
<p><button id="xhr">XHR</button> <span id="xhr-result"></span></p>
<p><button id="ws">WebSocket</button> <span id="ws-result"></span> <span id="ws-echo"></span></p>
<p><button id="open-same">window.open this page</button></p>
<script src="/app.js"></script>"#,
        field = escape(POST_FIELD),
        notes = escape("line 1\nline 2"),
    );
    document_in(lang, "Legacy app", "", hit, &body)
}

/// Fetches two HTML answers the way AJAX code does and keeps their text as received.
fn partials_page(hit: &Hit) -> String {
    document(
        "Partials",
        "",
        hit,
        r#"<ul id="list"></ul>
<script>
window.__partials = {};
Promise.all(["/fragment", "/json-html"].map(path =>
  fetch(path).then(r => r.text()).then(text => { window.__partials[path] = text; })
)).then(() => { window.__partials.done = true; },
        e => { window.__partials.error = String(e); });
</script>"#,
    )
}

/// An `EventSource` on `/events`, which ends its stream after each event.
fn sse_page(hit: &Hit) -> String {
    document(
        "Events",
        "",
        hit,
        r#"<script>
window.__events = [];
window.__source = new EventSource("/events");
window.__source.onmessage = e => window.__events.push(e.data);
</script>"#,
    )
}

/// POST forms inside open shadow roots: one attached by script, one declarative.
fn shadow_page(hit: &Hit) -> String {
    let form = |id: &str| {
        format!(
            r#"<form method="post" action="/submit"><input name="field" value="from {id}"><button id="{id}-submit" type="submit">send</button></form>"#
        )
    };
    let body = format!(
        r#"<div id="declarative"><template shadowrootmode="open">{declarative}</template></div>
<div id="scripted"></div>
<script>
document.getElementById("scripted").attachShadow({{ mode: "open" }}).innerHTML = {scripted:?};
</script>"#,
        declarative = form("declarative"),
        scripted = form("scripted"),
    );
    document("Shadow forms", "", hit, &body)
}

fn submit_page(hit: &Hit) -> String {
    let field = form_field(&hit.body, "field").unwrap_or_default();
    let body = format!(
        r#"<p>Posted: <span id="posted">{}</span></p>"#,
        escape(&field)
    );
    document("Posted", "", hit, &body)
}

fn csp_self_page(hit: &Hit) -> String {
    document("CSP self", "", hit, r#"<script src="/app.js"></script>"#)
}

fn csp_nonce_page(hit: &Hit) -> String {
    document(
        "CSP nonce",
        r#"<script nonce="abc">window.inlineRan = true;</script>
"#,
        hit,
        r#"<p>Inline script: <span id="inline"></span></p>
<script nonce="abc">document.getElementById("inline").textContent = window.inlineRan ? "ran" : "no";</script>
<script src="/app.js" nonce="abc"></script>"#,
    )
}

fn gzip_page(hit: &Hit) -> String {
    let body = format!(
        r#"<p id="text">{}</p>
<script src="/app.js"></script>"#,
        escape(GZIP_TEXT)
    );
    document("Gzip", "", hit, &body)
}

fn nohead_page(hit: &Hit) -> String {
    format!(
        r#"<!DOCTYPE html>
<html>
<body>
<p id="text">{}</p>
{}<script src="/app.js"></script>
</body>
</html>
"#,
        escape(NOHEAD_TEXT),
        session_block(hit)
    )
}

/// The bytes `/big` sends: exactly [`BIG_LEN`] bytes of HTML with a `<head>`.
pub fn big_page() -> Bytes {
    static PAGE: OnceLock<Bytes> = OnceLock::new();
    PAGE.get_or_init(|| {
        let head = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
                    <title>Big</title>\n<link rel=\"icon\" href=\"data:,\">\n</head>\n<body>\n<pre>\n";
        let tail = "</pre>\n<p id=\"end\">end of the big page</p>\n</body>\n</html>\n";
        let mut page = String::with_capacity(BIG_LEN);
        page.push_str(head);
        let mut line = 0u64;
        while page.len() + tail.len() < BIG_LEN {
            let text = format!("line {line:07} of the big page, padding padding padding\n");
            let room = BIG_LEN - tail.len() - page.len();
            page.push_str(&text[..text.len().min(room)]);
            line += 1;
        }
        page.push_str(tail);
        assert_eq!(page.len(), BIG_LEN);
        Bytes::from(page)
    })
    .clone()
}

/// `/big`: the page in chunks, produced by a task so they really leave apart.
fn big(shared: &Arc<Shared>) -> Response<AppBody> {
    shared.big_finished.store(false, Ordering::SeqCst);
    let page = big_page();
    let (tx, rx) = mpsc::channel(1);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut offset = 0;
        while offset < page.len() {
            if offset > 0 {
                tokio::time::sleep(BIG_PAUSE).await;
            }
            let end = (offset + BIG_CHUNK).min(page.len());
            if tx.send(page.slice(offset..end)).await.is_err() {
                return;
            }
            offset = end;
        }
        shared.big_finished.store(true, Ordering::SeqCst);
    });
    let mut response = Response::new(ChannelBody { rx }.boxed());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// A body fed by a channel; it ends when the sender is dropped.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Splits an `application/x-www-form-urlencoded` body into decoded pairs.
pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_pairs(body)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn full(body: impl Into<Bytes>) -> AppBody {
    Full::new(body.into()).boxed()
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<AppBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn html(body: impl Into<Bytes>) -> Response<AppBody> {
    respond(StatusCode::OK, "text/html; charset=utf-8", body)
}

fn with_csp(mut response: Response<AppBody>, policy: &'static str) -> Response<AppBody> {
    response
        .headers_mut()
        .insert("content-security-policy", HeaderValue::from_static(policy));
    response
}
