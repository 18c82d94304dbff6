//! Putting the agent's `<script>` tag into HTML pages on their way to the browser
//! (PROTOCOL.md "The injected tag", DESIGN.md §5).
//!
//! The proxy uses it in three steps:
//!
//! 1. [`prefer_identity`] on the request, so most upstreams answer navigations with
//!    plain HTML;
//! 2. [`plan`] on the response head: `Err(`[`Skip`]`)` says why the response is left
//!    alone, `Ok(`[`Plan`]`)` carries what injecting needs (content decoder, charset,
//!    CSP nonce);
//! 3. [`inject`] rewrites the head and wraps the body in a streaming body that inserts
//!    the [`Tag`] as the first element of `<head>`, then passes the rest through
//!    untouched.
//!
//! A response is never corrupted to get the tag in: whatever goes wrong while looking
//! for the place, the upstream's bytes go out unchanged (see `splice.rs`). How it went
//! is reported once per body through [`Plan::on_outcome`], for
//! `injections_total{outcome}`; [`Skip::label`] and [`Outcome::label`] give the label
//! values.
//!
//! `X-Session-Inject` is only read here; removing it from the response is the
//! proxy's job, with the other upstream control headers.

mod csp;
mod decode;
mod splice;

use std::fmt;
use std::fmt::Write as _;

use encoding_rs::Encoding;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_ENCODING,
    CONTENT_LENGTH, CONTENT_TYPE, ETAG, LAST_MODIFIED,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use lol_html::AsciiCompatibleEncoding;

pub use self::decode::{Coding, DecodeError};
use crate::web::body::ProxyBody;
use crate::web::fetch::Fetch;
use crate::web::headers::X_SESSION_INJECT;

/// How far into a body the tag is looked for; past it the page is passed through.
pub const SEARCH_LIMIT: usize = splice::LIMIT;

/// Digests of the body; stale once it is decoded or rewritten.
const CONTENT_MD5: HeaderName = HeaderName::from_static("content-md5");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("content-digest");
const REPR_DIGEST: HeaderName = HeaderName::from_static("repr-digest");

/// Called on the request before it is forwarded. For a navigation `GET` (see
/// [`Fetch`]) it sets `Accept-Encoding: identity`, so most upstreams send plain HTML
/// and [`inject`] has nothing to decode. Other requests are left as they are.
pub fn prefer_identity(method: &Method, fetch: Fetch, headers: &mut HeaderMap) {
    if method == Method::GET && fetch.navigation {
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
}

/// Why a response is not injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// `HEAD`: there is no body.
    #[error("HEAD request")]
    Method,
    /// Not `200` (this covers 204, 206 and 304).
    #[error("status is not 200")]
    Status,
    /// `Content-Disposition: attachment`: a download, not a page.
    #[error("attachment")]
    Attachment,
    /// Not `text/html` (or no or several `Content-Type`s). XHTML
    /// (`application/xhtml+xml`) is left alone too: the XML parser would not run an
    /// HTML-serialized script outside the XHTML namespace, and a slip makes the whole
    /// page a parse error.
    #[error("not text/html")]
    NotHtml,
    /// The upstream said `X-Session-Inject: off`.
    #[error("X-Session-Inject: off")]
    OptOut,
    /// A content coding other than identity, gzip, deflate or br, or several stacked.
    #[error("unsupported content encoding")]
    Encoding,
    /// A charset that is not ASCII-compatible (UTF-16, UTF-32, ISO-2022-JP, …).
    #[error("charset is not ASCII-compatible")]
    Charset,
    /// The Content-Security-Policy would have to be weakened.
    #[error("content security policy does not allow the agent")]
    Csp,
}

impl Skip {
    /// A short name for logs. (The metric `injections_total{outcome}` only tells
    /// `injected` from `skipped`; see the proxy.)
    pub fn label(self) -> &'static str {
        match self {
            Self::Method => "skip_method",
            Self::Status => "skip_status",
            Self::Attachment => "skip_attachment",
            Self::NotHtml => "skip_not_html",
            Self::OptOut => "skip_opt_out",
            Self::Encoding => "skip_encoding",
            Self::Charset => "skip_charset",
            Self::Csp => "skip_csp",
        }
    }
}

/// What happened to a body given to [`inject`], reported once through
/// [`Plan::on_outcome`] as soon as it is known (usually when `<head>` has been seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The tag is in.
    Injected,
    /// No place within [`SEARCH_LIMIT`] bytes, or the document ended where a tag
    /// would not parse as one (inside a comment or an unfinished tag). Passed through.
    NotFound,
    /// The parser gave up (ambiguous or oversized markup) or the body starts with a
    /// UTF-16 byte-order mark. Passed through.
    Unparsable,
    /// The upstream body (or its decoding) failed before the place was found; the
    /// bytes received so far went out unchanged, then the error.
    Failed,
    /// The body was dropped before the place was found (the client went away).
    Abandoned,
}

impl Outcome {
    /// A short name for logs. (The metric `injections_total{outcome}` only tells
    /// `injected` from `skipped`; see the proxy.)
    pub fn label(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::NotFound => "not_found",
            Self::Unparsable => "unparsable",
            Self::Failed => "failed",
            Self::Abandoned => "abandoned",
        }
    }

    /// Every value, for initialising metric series to zero.
    pub const ALL: [Outcome; 5] = [
        Self::Injected,
        Self::NotFound,
        Self::Unparsable,
        Self::Failed,
        Self::Abandoned,
    ];
}

/// The agent tag to insert: `src` plus `data-*` attributes (names without the
/// `data-` prefix; lowercase ASCII letters, digits, `-` and `_`, others are left
/// out). See [`Tag::to_html`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub src: String,
    pub data: Vec<(&'static str, String)>,
}

impl Tag {
    /// `<script src="SRC" data-NAME="VALUE"… nonce="N"></script>`. Values are
    /// HTML-escaped, and every non-ASCII character becomes a character reference,
    /// so the tag is pure ASCII and reads the same in any ASCII-compatible charset.
    pub fn to_html(&self, nonce: Option<&str>) -> String {
        let mut html = String::with_capacity(64 + self.src.len());
        html.push_str("<script src=\"");
        push_escaped(&mut html, &self.src);
        html.push('"');
        for (name, value) in &self.data {
            if !valid_data_name(name) {
                tracing::warn!(name, "agent tag: invalid data attribute name left out");
                continue;
            }
            html.push_str(" data-");
            html.push_str(name);
            html.push_str("=\"");
            push_escaped(&mut html, value);
            html.push('"');
        }
        if let Some(nonce) = nonce {
            html.push_str(" nonce=\"");
            push_escaped(&mut html, nonce);
            html.push('"');
        }
        html.push_str("></script>");
        html
    }
}

fn valid_data_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn push_escaped(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            ' '..='~' => out.push(ch),
            // Writing into a String cannot fail.
            _ => {
                let _ = write!(out, "&#x{:X};", u32::from(ch));
            }
        }
    }
}

/// What [`inject`] needs to know about a response [`plan`] accepted.
pub struct Plan {
    coding: Option<Coding>,
    encoding: AsciiCompatibleEncoding,
    nonce: Option<String>,
    report: Option<splice::Report>,
}

impl Plan {
    /// The content coding to undo, if any.
    pub fn coding(&self) -> Option<Coding> {
        self.coding
    }

    /// The CSP nonce the tag will carry, if the page's policy needs one.
    pub fn nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }

    /// Calls `report` once with the body's [`Outcome`]: when the tag is placed or
    /// given up on, or when the body is dropped before that. Without it, outcomes go
    /// unreported.
    pub fn on_outcome(mut self, report: impl FnOnce(Outcome) + Send + 'static) -> Self {
        self.report = Some(Box::new(report));
        self
    }
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("coding", &self.coding)
            .field("encoding", &<&Encoding>::from(self.encoding).name())
            .field("nonce", &self.nonce)
            .field("report", &self.report.is_some())
            .finish()
    }
}

/// Decides whether to inject into a response. `request_method` is the client's.
///
/// Checked in this order: `HEAD` → [`Skip::Method`]; status not 200 →
/// [`Skip::Status`]; `Content-Disposition: attachment` → [`Skip::Attachment`];
/// `Content-Type` not `text/html` → [`Skip::NotHtml`]; `X-Session-Inject: off` →
/// [`Skip::OptOut`]; a `Content-Encoding` other than identity, gzip, x-gzip, deflate
/// or br, or more than one → [`Skip::Encoding`]; a charset that is not
/// ASCII-compatible → [`Skip::Charset`] (an unknown label is treated as absent,
/// as browsers do); a CSP that allows neither `'self'` nor a nonce → [`Skip::Csp`].
pub fn plan(request_method: &Method, parts: &http::response::Parts) -> Result<Plan, Skip> {
    let headers = &parts.headers;
    if request_method == Method::HEAD {
        return Err(Skip::Method);
    }
    if parts.status != StatusCode::OK {
        return Err(Skip::Status);
    }
    if headers
        .get_all(CONTENT_DISPOSITION)
        .iter()
        .any(|value| value_type(value.as_bytes()).eq_ignore_ascii_case(b"attachment"))
    {
        return Err(Skip::Attachment);
    }
    let mut content_types = headers.get_all(CONTENT_TYPE).iter();
    let content_type = match (content_types.next(), content_types.next()) {
        (Some(value), None) => value.to_str().map_err(|_| Skip::NotHtml)?,
        _ => return Err(Skip::NotHtml),
    };
    if !value_type(content_type.as_bytes()).eq_ignore_ascii_case(b"text/html") {
        return Err(Skip::NotHtml);
    }
    if headers
        .get_all(X_SESSION_INJECT)
        .iter()
        .any(|value| value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"off"))
    {
        return Err(Skip::OptOut);
    }
    let coding = coding(headers)?;
    let encoding = charset(content_type)?;
    let nonce = csp::nonce_for(headers).map_err(|csp::Blocked| Skip::Csp)?;
    Ok(Plan {
        coding,
        encoding,
        nonce,
        report: None,
    })
}

/// The part of a header value before its first `;`, trimmed (a MIME essence or a
/// disposition type). Borrowed: this runs on every response.
fn value_type(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == b';').unwrap_or(bytes.len());
    bytes[..end].trim_ascii()
}

fn coding(headers: &HeaderMap) -> Result<Option<Coding>, Skip> {
    let mut found = None;
    for value in headers.get_all(CONTENT_ENCODING) {
        let value = value.to_str().map_err(|_| Skip::Encoding)?;
        for token in value.split(',').map(str::trim) {
            if token.is_empty() || token.eq_ignore_ascii_case("identity") {
                continue;
            }
            // A second real coding means stacked codings: not worth supporting.
            if found.is_some() {
                return Err(Skip::Encoding);
            }
            found = Some(Coding::from_token(token).ok_or(Skip::Encoding)?);
        }
    }
    Ok(found)
}

/// The encoding the `charset` parameter names; UTF-8 when there is none or it is
/// unknown (the tag is ASCII, and any ASCII-compatible guess finds the same tags).
fn charset(content_type: &str) -> Result<AsciiCompatibleEncoding, Skip> {
    let label = content_type.split(';').skip(1).find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"'))
    });
    let Some(label) = label else {
        return Ok(AsciiCompatibleEncoding::utf_8());
    };
    // Not in the Encoding Standard, so unknown to encoding_rs, but a page that says
    // so is certainly not ASCII-compatible.
    if ["utf-32", "utf32", "ucs-4", "ucs4", "iso-10646-ucs-4"]
        .iter()
        .any(|prefix| {
            label
                .as_bytes()
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
        })
    {
        return Err(Skip::Charset);
    }
    match Encoding::for_label(label.as_bytes()) {
        None => Ok(AsciiCompatibleEncoding::utf_8()),
        // Covers UTF-16LE/BE, ISO-2022-JP and `replacement`.
        Some(encoding) => AsciiCompatibleEncoding::new(encoding).ok_or(Skip::Charset),
    }
}

/// Rewrites a response [`plan`] accepted: removes `Content-Length`, `ETag`,
/// `Last-Modified`, `Accept-Ranges` and body digests, and `Content-Encoding` when the
/// body is decoded; sets `Cache-Control: no-store` (the page carries a session);
/// and returns the body with the tag inserted, streaming. The CSP header is never
/// touched.
pub fn inject(
    plan: Plan,
    parts: &mut http::response::Parts,
    body: ProxyBody,
    tag: &Tag,
) -> ProxyBody {
    let headers = &mut parts.headers;
    for name in [
        CONTENT_LENGTH,
        ETAG,
        LAST_MODIFIED,
        ACCEPT_RANGES,
        CONTENT_MD5,
        CONTENT_DIGEST,
        REPR_DIGEST,
    ] {
        headers.remove(name);
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let body = match plan.coding {
        Some(coding) => {
            headers.remove(CONTENT_ENCODING);
            decode::decode(body, coding)
        }
        None => body,
    };
    splice::Injecting::new(body, plan.encoding, tag.to_html(plan.nonce()), plan.report)
        .boxed_unsync()
}

/// Bodies for tests: hand-made frames, and a channel the test feeds while it reads.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::{Body, Frame};
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    use crate::web::body::{BoxError, ProxyBody};

    pub type Item = Result<Frame<Bytes>, BoxError>;

    struct Frames(VecDeque<Item>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Item>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    pub fn frames(items: Vec<Item>) -> ProxyBody {
        Frames(items.into()).boxed_unsync()
    }

    pub fn body_of(chunks: Vec<Vec<u8>>) -> ProxyBody {
        frames(
            chunks
                .into_iter()
                .map(|chunk| Ok(Frame::data(Bytes::from(chunk))))
                .collect(),
        )
    }

    struct Channel(mpsc::Receiver<Item>);

    impl Body for Channel {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
            self.0.poll_recv(cx)
        }
    }

    pub fn channel(capacity: usize) -> (mpsc::Sender<Item>, ProxyBody) {
        let (sender, receiver) = mpsc::channel(capacity);
        (sender, Channel(receiver).boxed_unsync())
    }
}

#[cfg(test)]
mod tests;
