use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body::Frame;
use http_body_util::BodyExt;

use super::testing::{body_of, channel, frames};
use super::*;
use crate::web::body::BoxError;

fn tag() -> Tag {
    Tag {
        src: "/__sessiongate/agent.js?v=1".into(),
        data: vec![("prefix", "/__sessiongate".into()), ("mode", "tab".into())],
    }
}

fn tag_html() -> String {
    tag().to_html(None)
}

fn wrapped() -> String {
    format!("<head>{}</head>", tag_html())
}

fn parts(status: u16, headers: &[(&str, &str)]) -> http::response::Parts {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

fn html_parts() -> http::response::Parts {
    parts(200, &[("content-type", "text/html; charset=utf-8")])
}

struct Run {
    output: Result<Vec<u8>, BoxError>,
    outcome: Option<Outcome>,
    headers: HeaderMap,
}

impl Run {
    fn text(&self) -> String {
        String::from_utf8(self.output.as_ref().unwrap().clone()).unwrap()
    }
}

async fn run_with(mut parts: http::response::Parts, body: ProxyBody) -> Run {
    let seen = Arc::new(Mutex::new(None));
    let report = Arc::clone(&seen);
    let plan = plan(&Method::GET, &parts)
        .unwrap()
        .on_outcome(move |outcome| {
            let previous = report.lock().unwrap().replace(outcome);
            assert!(previous.is_none(), "outcome reported twice");
        });
    let body = inject(plan, &mut parts, body, &tag());
    let output = body
        .collect()
        .await
        .map(|collected| collected.to_bytes().to_vec());
    let outcome = *seen.lock().unwrap();
    Run {
        output,
        outcome,
        headers: parts.headers,
    }
}

async fn run_chunks(chunks: Vec<Vec<u8>>) -> Run {
    run_with(html_parts(), body_of(chunks)).await
}

async fn run(input: &str) -> Run {
    run_chunks(vec![input.as_bytes().to_vec()]).await
}

/// Output is the input, or the input plus exactly one tag (bare or wrapped).
fn assert_exact(input: &[u8], output: &[u8]) {
    if output == input {
        return;
    }
    let tag = tag_html();
    let output = String::from_utf8_lossy(output);
    let input = String::from_utf8_lossy(input);
    assert_eq!(output.matches(&tag).count(), 1, "{output:?}");
    let without = output.replacen(&wrapped(), "", 1);
    let without = if without.len() < output.len() {
        without
    } else {
        output.replacen(&tag, "", 1)
    };
    assert_eq!(without, input, "output is not input plus one tag");
}

const PAGE: &str = "<!DOCTYPE html>\n<!-- first -->\n<html lang=en>\n<head>\n<meta charset=utf-8><title>t</title><script>var x = '<head>';</script>\n</head>\n<body><head><p>hi</p></body>\n</html>\n";

fn page_injected() -> String {
    PAGE.replacen("<head>", &format!("<head>{}", tag_html()), 1)
}

#[tokio::test]
async fn tag_goes_first_into_head() {
    let run = run(PAGE).await;
    assert_eq!(run.text(), page_injected());
    assert_eq!(run.outcome, Some(Outcome::Injected));
    // Doctype and comment stay before it; a second <head> gets nothing.
    assert_eq!(run.text().matches("agent.js").count(), 1);
}

#[tokio::test]
async fn every_split_position() {
    let expected = page_injected();
    for split in 0..=PAGE.len() {
        let (a, b) = PAGE.as_bytes().split_at(split);
        let run = run_chunks(vec![a.to_vec(), b.to_vec()]).await;
        assert_eq!(run.text(), expected, "split at {split}");
    }
}

#[tokio::test]
async fn one_byte_chunks() {
    let chunks = PAGE.bytes().map(|b| vec![b]).collect();
    let run = run_chunks(chunks).await;
    assert_eq!(run.text(), page_injected());
    assert_eq!(run.outcome, Some(Outcome::Injected));
}

#[tokio::test]
async fn head_spellings() {
    for head in ["<HEAD>", "<head class=x>", "<Head\n data-a='>'>", "<head/>"] {
        let input = format!("<!doctype html><html>{head}<title>t</title></head><body></body>");
        let expected = input.replacen(head, &format!("{head}{}", tag_html()), 1);
        assert_eq!(run(&input).await.text(), expected, "{head}");
    }
}

#[tokio::test]
async fn without_head() {
    let cases = [
        (
            "<html><body>x</body></html>",
            "<html>WRAP<body>x</body></html>",
        ),
        ("<p>hi", "WRAP<p>hi"),
        (
            "<!doctype html>\n<title>t</title>",
            "<!doctype html>\nWRAP<title>t</title>",
        ),
        ("<HTML><svg></svg>", "<HTML>WRAP<svg></svg>"),
        ("text then <b>bold</b>", "text then WRAP<b>bold</b>"),
        ("<head<<>>", "WRAP<head<<>>"),
        ("<script>never closed", "WRAP<script>never closed"),
    ];
    for (input, expected) in cases {
        let run = run(input).await;
        assert_eq!(run.text(), expected.replace("WRAP", &wrapped()), "{input}");
        assert_eq!(run.outcome, Some(Outcome::Injected));
    }
}

/// A body without any element start tag is not a page, whatever its label says
/// (JSON, plain text, a bare text fragment): it passes through byte for byte, never
/// with a tag appended.
#[tokio::test]
async fn no_elements_at_all() {
    for input in [
        "",
        "hello",
        "<!doctype html>",
        "<!-- c -->text",
        "a <",
        r#"{"ok":true}"#,
        "[1, 2, 3]\n",
        "a < b && c > d",
        "hi <!-- open",
        "<!-- a >",
        "x </",
        "x </p",
        "</div>",
    ] {
        let run = run(input).await;
        assert_eq!(run.text(), input, "{input:?}");
        assert_eq!(run.outcome, Some(Outcome::NotFound), "{input:?}");
    }
}

/// A document whose only element is `<html>` gets the tag right after it.
#[tokio::test]
async fn html_is_the_only_element() {
    for (input, at) in [
        ("<html>", "<html>"),
        (
            "<!doctype html><html lang=de>Hallo</html>",
            "<html lang=de>",
        ),
        ("<HTML>\ntext <!-- c -->", "<HTML>"),
        ("<html>x <p class=\"y", "<html>"),
    ] {
        let expected = input.replacen(at, &format!("{at}{}", wrapped()), 1);
        let run = run(input).await;
        assert_eq!(run.text(), expected, "{input:?}");
        assert_eq!(run.outcome, Some(Outcome::Injected), "{input:?}");
        let bytes = run_chunks(input.bytes().map(|b| vec![b]).collect()).await;
        assert_eq!(bytes.text(), expected, "{input:?} in one-byte chunks");
    }
}

#[tokio::test]
async fn empty_body_chunks() {
    let run = run_chunks(vec![vec![], b"<head>".to_vec(), vec![]]).await;
    assert_eq!(run.text(), format!("<head>{}", tag_html()));
}

#[tokio::test]
async fn ambiguous_markup_after_the_place_is_not_parsed() {
    // lol_html's strict mode refuses this markup, but the place is found first and
    // the parser is not fed past it.
    let input = "<select><xmp><script>alert(1)</script></select><head>";
    let run = run(input).await;
    assert_eq!(run.text(), format!("{}{input}", wrapped()));
    assert_eq!(run.outcome, Some(Outcome::Injected));
}

#[tokio::test]
async fn utf16_bom_passes_through() {
    let input: Vec<u8> = [&[0xff, 0xfe][..], "<\0h\0e\0a\0d\0>\0".as_bytes()].concat();
    let run = run_chunks(input.iter().map(|b| vec![*b]).collect()).await;
    assert_eq!(run.output.unwrap(), input);
    assert_eq!(run.outcome, Some(Outcome::Unparsable));
}

#[tokio::test]
async fn utf8_bom_is_kept_before_the_tag() {
    let input = "\u{feff}<html><head></head>";
    let expected = format!("\u{feff}<html><head>{}</head>", tag_html());
    assert_eq!(run(input).await.text(), expected);
}

#[tokio::test]
async fn no_place_within_the_limit() {
    let input = "x".repeat(SEARCH_LIMIT + 10) + "<head>";
    let chunks = input.as_bytes().chunks(8192).map(<[u8]>::to_vec).collect();
    let run = run_chunks(chunks).await;
    assert_eq!(run.output.unwrap(), input.as_bytes());
    assert_eq!(run.outcome, Some(Outcome::NotFound));
}

#[tokio::test]
async fn legacy_charset_page() {
    let parts = parts(200, &[("content-type", "text/html; charset=Shift_JIS")]);
    // A Shift_JIS title ("日本") after the place: bytes kept as they are.
    let input: Vec<u8> = [
        &b"<html><head><title>"[..],
        &[0x93, 0xfa, 0x96, 0x7b],
        b"</title>",
    ]
    .concat();
    let run = run_with(parts, body_of(vec![input.clone()])).await;
    let at = "<html><head>".len();
    let expected = [&input[..at], tag_html().as_bytes(), &input[at..]].concat();
    assert_eq!(run.output.unwrap(), expected);
}

/// Random markup-ish bytes, randomly chunked: never a panic, never a changed byte.
#[tokio::test]
async fn random_markup_is_exact() {
    let alphabet = b"<>/!-=\"' \nheadtmlscrip?x\xc3\xa9";
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |bound: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % bound as u64) as usize
    };
    let mut injected = 0;
    for _ in 0..1500 {
        let len = next(60);
        let input: Vec<u8> = (0..len).map(|_| alphabet[next(alphabet.len())]).collect();
        let mut chunks = Vec::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(1 + next(rest.len()));
            chunks.push(chunk.to_vec());
            rest = tail;
        }
        let run = run_chunks(chunks).await;
        let output = run.output.unwrap();
        assert_exact(&input, &output);
        assert_eq!(
            output != input,
            run.outcome == Some(Outcome::Injected),
            "{:?}",
            String::from_utf8_lossy(&input)
        );
        injected += usize::from(run.outcome == Some(Outcome::Injected));
    }
    // Both paths were exercised.
    assert!(injected > 0 && injected < 1500, "{injected}");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        encoder.write_all(data).unwrap();
    }
    out
}

#[tokio::test]
async fn compressed_bodies_are_decoded() {
    type Encode = fn(&[u8]) -> Vec<u8>;
    let cases: [(&str, Encode); 4] = [
        ("gzip", gzip),
        ("x-gzip", gzip),
        ("deflate", zlib),
        ("br", brotli),
    ];
    for (coding, encode) in cases {
        let parts = parts(
            200,
            &[
                ("content-type", "text/html"),
                ("content-encoding", coding),
                ("content-length", "123"),
            ],
        );
        let compressed = encode(PAGE.as_bytes());
        let chunks = compressed.chunks(7).map(<[u8]>::to_vec).collect();
        let run = run_with(parts, body_of(chunks)).await;
        assert_eq!(run.text(), page_injected(), "{coding}");
        assert!(run.headers.get("content-encoding").is_none(), "{coding}");
        assert!(run.headers.get("content-length").is_none(), "{coding}");
    }
}

#[tokio::test]
async fn corrupt_gzip_is_a_body_error() {
    let mut compressed = gzip(PAGE.as_bytes());
    let middle = compressed.len() / 2;
    compressed[middle..].iter_mut().for_each(|b| *b ^= 0x5a);
    let run = run_with(parts_gzip(), body_of(vec![compressed])).await;
    let error = run.output.unwrap_err();
    assert!(error.is::<DecodeError>(), "{error}");

    let run = run_with(parts_gzip(), body_of(vec![b"not gzip at all".to_vec()])).await;
    assert!(run.output.is_err());
    assert_eq!(run.outcome, Some(Outcome::Failed));
}

fn parts_gzip() -> http::response::Parts {
    parts(
        200,
        &[("content-type", "text/html"), ("content-encoding", "gzip")],
    )
}

#[tokio::test]
async fn upstream_error_keeps_the_bytes_so_far() {
    let body = frames(vec![
        Ok(Frame::data(Bytes::from_static(b"<!doctype html><ht"))),
        Err("upstream reset".into()),
    ]);
    let mut parts = html_parts();
    let plan = plan(&Method::GET, &parts).unwrap();
    let mut body = inject(plan, &mut parts, body, &tag());
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "<!doctype html><ht");
    assert!(body.frame().await.unwrap().is_err());
}

#[tokio::test]
async fn trailers_pass_after_the_data() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let body = frames(vec![
        Ok(Frame::data(Bytes::from_static(b"<p>x"))),
        Ok(Frame::trailers(trailers.clone())),
    ]);
    let mut parts = html_parts();
    let plan = plan(&Method::GET, &parts).unwrap();
    let collected = inject(plan, &mut parts, body, &tag())
        .collect()
        .await
        .unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));
    assert_eq!(collected.to_bytes(), format!("{}<p>x", wrapped()));
}

/// 5 MB through a channel: output starts before the input is complete, and the rest
/// is passed through untouched.
#[tokio::test]
async fn streams_without_buffering_the_body() {
    let (sender, body) = channel(4);
    let mut parts = html_parts();
    let outcome = Arc::new(Mutex::new(None));
    let report = Arc::clone(&outcome);
    let plan = plan(&Method::GET, &parts)
        .unwrap()
        .on_outcome(move |o| *report.lock().unwrap() = Some(o));
    let mut body = inject(plan, &mut parts, body, &tag());

    let head = "<!doctype html><html><head><title>big</title>";
    sender
        .send(Ok(Frame::data(Bytes::from_static(head.as_bytes()))))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("a frame before the input is complete")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "<!doctype html><html><head>");
    assert_eq!(*outcome.lock().unwrap(), Some(Outcome::Injected));

    let chunk = Bytes::from(vec![b'a'; 64 * 1024]);
    let chunks = 5 * 1024 * 1024 / chunk.len();
    let producer = tokio::spawn(async move {
        for _ in 0..chunks {
            sender.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
        }
    });
    let mut total = 0;
    let mut tags = 0;
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        tags += data.windows(8).filter(|w| w == b"agent.js").count();
        total += data.len();
    }
    producer.await.unwrap();
    assert_eq!(tags, 1);
    assert_eq!(
        total,
        tag_html().len() + head.len() - "<!doctype html><html><head>".len() + chunks * 64 * 1024
    );
}

#[tokio::test]
async fn dropped_body_reports_abandoned() {
    let (_sender, body) = channel(1);
    let mut parts = html_parts();
    let outcome = Arc::new(Mutex::new(None));
    let report = Arc::clone(&outcome);
    let plan = plan(&Method::GET, &parts)
        .unwrap()
        .on_outcome(move |o| *report.lock().unwrap() = Some(o));
    drop(inject(plan, &mut parts, body, &tag()));
    assert_eq!(*outcome.lock().unwrap(), Some(Outcome::Abandoned));
}

#[tokio::test]
async fn response_headers_are_rewritten() {
    let parts = parts(
        200,
        &[
            ("content-type", "text/html"),
            ("content-length", "10"),
            ("etag", "\"v1\""),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("accept-ranges", "bytes"),
            ("cache-control", "public, max-age=600"),
            ("content-security-policy", "script-src 'nonce-abc'"),
        ],
    );
    let run = run_with(parts, body_of(vec![b"<head>".to_vec()])).await;
    for gone in ["content-length", "etag", "last-modified", "accept-ranges"] {
        assert!(run.headers.get(gone).is_none(), "{gone}");
    }
    assert_eq!(run.headers["cache-control"], "no-store");
    assert_eq!(
        run.headers["content-security-policy"],
        "script-src 'nonce-abc'"
    );
    assert_eq!(run.text(), format!("<head>{}", tag().to_html(Some("abc"))));
    assert!(run.text().contains(" nonce=\"abc\"></script>"));
}

#[test]
fn skips() {
    let html = [("content-type", "text/html")];
    let check = |method: Method, parts: http::response::Parts| plan(&method, &parts).err();
    assert_eq!(check(Method::HEAD, parts(200, &html)), Some(Skip::Method));
    for status in [204, 206, 304, 404, 500] {
        assert_eq!(check(Method::GET, parts(status, &html)), Some(Skip::Status));
    }
    assert_eq!(check(Method::POST, parts(200, &html)), None);
    let with = |extra: (&str, &str)| check(Method::GET, parts(200, &[html[0], extra]));
    assert_eq!(
        with(("content-disposition", "Attachment; filename=a.html")),
        Some(Skip::Attachment)
    );
    assert_eq!(with(("content-disposition", "inline")), None);
    assert_eq!(with(("x-session-inject", "OFF")), Some(Skip::OptOut));
    assert_eq!(with(("x-session-inject", "on")), None);
    assert_eq!(with(("content-encoding", "zstd")), Some(Skip::Encoding));
    assert_eq!(with(("content-encoding", "gzip, br")), Some(Skip::Encoding));
    assert_eq!(with(("content-encoding", "identity")), None);
    assert_eq!(with(("content-encoding", "identity, gzip")), None);
    assert_eq!(
        with(("content-security-policy", "script-src 'sha256-abc'")),
        Some(Skip::Csp)
    );
    for content_type in [
        "application/json",
        "application/xhtml+xml",
        "text/plain; charset=utf-8",
        "text/htmlx",
    ] {
        assert_eq!(
            check(Method::GET, parts(200, &[("content-type", content_type)])),
            Some(Skip::NotHtml),
            "{content_type}"
        );
    }
    assert_eq!(check(Method::GET, parts(200, &[])), Some(Skip::NotHtml));
    assert_eq!(
        check(
            Method::GET,
            parts(
                200,
                &[
                    ("content-type", "text/html"),
                    ("content-type", "text/plain")
                ]
            )
        ),
        Some(Skip::NotHtml)
    );
    for charset in [
        "utf-16",
        "UCS-4",
        "UTF-32BE",
        "UTF-16LE",
        "\"utf-16be\"",
        "utf-32",
        "ISO-2022-JP",
        "iso-2022-kr",
    ] {
        let content_type = format!("text/html; charset={charset}");
        assert_eq!(
            check(Method::GET, parts(200, &[("content-type", &content_type)])),
            Some(Skip::Charset),
            "{charset}"
        );
    }
    for charset in ["utf-8", "windows-1252", "Shift_JIS", "no-such-charset"] {
        let content_type = format!("TEXT/HTML ; Charset={charset}");
        assert_eq!(
            check(Method::GET, parts(200, &[("content-type", &content_type)])),
            None,
            "{charset}"
        );
    }
}

#[test]
fn plan_carries_coding_and_nonce() {
    let plan = plan(
        &Method::GET,
        &parts(
            200,
            &[
                ("content-type", "text/html"),
                ("content-encoding", "x-gzip"),
                ("content-security-policy", "default-src 'self'"),
                (
                    "content-security-policy",
                    "script-src 'strict-dynamic' 'nonce-n0nce'",
                ),
            ],
        ),
    )
    .unwrap();
    assert_eq!(plan.coding(), Some(Coding::Gzip));
    assert_eq!(plan.nonce(), Some("n0nce"));
}

#[test]
fn labels_are_distinct() {
    let mut labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.label()).collect();
    labels.extend(
        [
            Skip::Method,
            Skip::Status,
            Skip::Attachment,
            Skip::NotHtml,
            Skip::OptOut,
            Skip::Encoding,
            Skip::Charset,
            Skip::Csp,
        ]
        .iter()
        .map(|s| s.label()),
    );
    let count = labels.len();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), count);
}

#[test]
fn tag_attributes_are_escaped() {
    let tag = Tag {
        src: "/p/agent.js?v=1&x=\"<y>\"".into(),
        data: vec![
            ("handle", "a\"b<c&d'e".into()),
            ("prefix", "/caf\u{e9}".into()),
            ("Bad Name", "dropped".into()),
        ],
    };
    assert_eq!(
        tag.to_html(Some("n\"1")),
        "<script src=\"/p/agent.js?v=1&amp;x=&quot;&lt;y&gt;&quot;\" \
         data-handle=\"a&quot;b&lt;c&amp;d&#39;e\" data-prefix=\"/caf&#xE9;\" \
         nonce=\"n&quot;1\"></script>"
    );
}

#[test]
fn identity_for_navigations() {
    let request = |method: Method, headers: &[(&str, &str)]| {
        let mut map = HeaderMap::new();
        map.insert("accept-encoding", "gzip, br".parse().unwrap());
        for (name, value) in headers {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let fetch = crate::web::fetch::Fetch::of(&method, &map);
        prefer_identity(&method, fetch, &mut map);
        map["accept-encoding"].to_str().unwrap().to_owned()
    };
    let navigate = [
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
    ];
    assert_eq!(request(Method::GET, &navigate), "identity");
    assert_eq!(
        request(Method::GET, &[("sec-fetch-mode", "navigate")]),
        "identity"
    );
    assert_eq!(
        request(Method::GET, &[("sec-fetch-dest", "document")]),
        "identity"
    );
    assert_eq!(
        request(Method::GET, &[("accept", "text/html,*/*")]),
        "identity"
    );
    assert_eq!(request(Method::POST, &navigate), "gzip, br");
    // Fetch/XHR from a modern browser: Sec-Fetch-* present, Accept is not trusted.
    assert_eq!(
        request(
            Method::GET,
            &[
                ("sec-fetch-mode", "cors"),
                ("sec-fetch-dest", "empty"),
                ("accept", "text/html")
            ]
        ),
        "gzip, br"
    );
    assert_eq!(
        request(Method::GET, &[("accept", "application/json")]),
        "gzip, br"
    );
    assert_eq!(request(Method::GET, &[]), "gzip, br");
}
