//! The HTML injector: for any page, split into any chunks, the output is the input
//! with exactly one insertion — the agent tag (into an existing `<head>`) or
//! `<head>TAG</head>` (a page without one) — or the input unchanged.
#![no_main]

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use sessiongate::inject::{inject, plan, Tag};
use sessiongate::web::body::BoxError;

/// A body that yields the given chunks, one frame each.
struct Chunks(Vec<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.0.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(self.0.remove(0)))))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// `output` is `input` with `tag` inserted at one place.
fn is_one_insertion(input: &[u8], output: &[u8], tag: &[u8]) -> bool {
    if output.len() != input.len() + tag.len() {
        return false;
    }
    let prefix = input.iter().zip(output).take_while(|(a, b)| a == b).count();
    let suffix = input
        .iter()
        .rev()
        .zip(output.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let lowest = input.len().saturating_sub(suffix);
    (lowest..=prefix.min(input.len())).any(|at| {
        output[at..at + tag.len()] == *tag
            && output[..at] == input[..at]
            && output[at + tag.len()..] == input[at..]
    })
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, the rest is the page.
    let Some((&size, page)) = data.split_first() else {
        return;
    };
    let size = usize::from(size % 64) + 1;
    let chunks = page.chunks(size).map(Bytes::copy_from_slice).collect();
    let mut parts = Response::builder()
        .status(200)
        .header("content-type", "text/html; charset=utf-8")
        .body(())
        .expect("valid response head")
        .into_parts()
        .0;
    let tag = Tag {
        src: "/__sessiongate/agent.js?v=1".into(),
        data: vec![("mode", "tab".into())],
    };
    let tag_html = tag.to_html(None);
    let wrapped = format!("<head>{tag_html}</head>");
    let Ok(plan) = plan(&Method::GET, &parts) else {
        panic!("a 200 text/html page must be planned for injection");
    };
    let body = inject(plan, &mut parts, Chunks(chunks).boxed_unsync(), &tag);
    let output = runtime()
        .block_on(body.collect())
        .expect("an identity body never fails")
        .to_bytes();
    assert!(
        output == page
            || is_one_insertion(page, &output, tag_html.as_bytes())
            || is_one_insertion(page, &output, wrapped.as_bytes()),
        "output is neither the input nor the input plus one tag"
    );
});
