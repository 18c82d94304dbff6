//! The streaming body that places the agent tag.
//!
//! lol_html is used as a *locator*, not as the rewriter of record: the input is fed
//! to it (its output is discarded) only until an element handler reports where the
//! tag belongs, as a byte offset into the input (`source_location`). Meanwhile the
//! upstream's frames are held as they came. Once the place is known the body emits
//! the held frames with the tag between the two halves of the frame it falls in
//! (slices of the same `Bytes`, nothing copied), drops the parser, and passes every
//! later frame through untouched. So the output is the upstream's bytes plus exactly
//! one tag, by construction: no re-serialization by the parser can alter a byte, and
//! after the place is found the cost per frame is nil.
//!
//! The parser sees as little as it can: a frame is fed in growing steps
//! ([`FIRST_STEP`], then as much as it has seen so far, at most [`MAX_STEP`]), and
//! feeding stops at the step where the place is found. A 1 MiB page arriving as one
//! frame with `<head>` at byte 40 costs one 256-byte parse, not a megabyte's. And
//! the start most pages have (`<!doctype …>`, `<html …>`, `<head>`, nothing else
//! between but whitespace) is recognised without making a parser at all
//! ([`quick_place`], which gives up on anything less plain, leaving it to the
//! parser; a property test holds it to the parser's answer).
//!
//! Where it goes ([`Place`]): after the first element's start tag if that element is
//! `<head>`; otherwise `<head>TAG</head>` right before the first element that is not
//! `<html>` (the parser then puts the script in the implied head). A document whose
//! only element is `<html>` gets `<head>TAG</head>` right after that start tag. A body
//! with no element start tag at all — plain text, JSON or a fragment of text labelled
//! `text/html`, a comment, a doctype alone — is not a page: it passes through
//! unchanged ([`Outcome::NotFound`]), never with a tag appended.
//!
//! Any parser error, a UTF-16 byte-order mark (browsers honour it over the header),
//! or no place within [`LIMIT`] bytes: the held input goes out unchanged and the rest
//! passes through — injection skipped, never a corrupted or lost byte. lol_html
//! panics on `write`/`end` after an error, so a failed parser is dropped at once and
//! never touched again.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::mem;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use lol_html::{send, AsciiCompatibleEncoding, MemorySettings, OutputSink, Selector};

use super::Outcome;
use crate::web::body::{BoxError, ProxyBody};

/// How much input may be held while looking for the place (a `<head>` this far into a
/// page is not worth the latency; such a page is passed through).
pub(crate) const LIMIT: usize = 256 * 1024;

/// Cap on lol_html's own buffers (one huge tag could otherwise grow them).
const PARSER_MEMORY: usize = 1024 * 1024;

/// Frames shorter than this are appended to the last held frame rather than held
/// on their own (see `Holding::take`).
const SMALL_FRAME: usize = 1024;

/// A held frame takes small frames appended until it is this long.
const MERGED_FRAME: usize = 16 * 1024;

/// The first write to the parser (most pages have their `<head>` well within it).
const FIRST_STEP: usize = 256;

/// The largest write to the parser: steps double from [`FIRST_STEP`] up to it.
const MAX_STEP: usize = 64 * 1024;

/// Called once with what happened to the body.
pub(crate) type Report = Box<dyn FnOnce(Outcome) + Send>;

/// Where the tag goes: a byte offset into the input, and whether it lands inside an
/// existing `<head>` (bare tag) or needs a `<head>` of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    at: usize,
    in_head: bool,
}

/// The place, written by the element handler (which must be `'static + Send`) and read
/// after each `write`. Same thread, so relaxed ordering suffices.
#[derive(Default)]
struct Found {
    /// `at + 1`; 0 while nothing is found.
    at_plus_one: AtomicUsize,
    in_head: AtomicBool,
    /// The end of the `<html>` start tag `+ 1`; 0 while none was seen. The place of
    /// last resort, for a document with no other element.
    html_end_plus_one: AtomicUsize,
}

impl Found {
    fn get(&self) -> Option<Place> {
        let at_plus_one = self.at_plus_one.load(Ordering::Relaxed);
        at_plus_one.checked_sub(1).map(|at| Place {
            at,
            in_head: self.in_head.load(Ordering::Relaxed),
        })
    }

    fn set(&self, place: Place) {
        self.in_head.store(place.in_head, Ordering::Relaxed);
        self.at_plus_one
            .store(place.at.saturating_add(1), Ordering::Relaxed);
    }

    /// Records the first `<html>` start tag's end.
    fn saw_html(&self, end: usize) {
        if self.html_end_plus_one.load(Ordering::Relaxed) == 0 {
            self.html_end_plus_one
                .store(end.saturating_add(1), Ordering::Relaxed);
        }
    }

    /// Right after the `<html>` start tag, if there was one.
    fn after_html(&self) -> Option<Place> {
        let end_plus_one = self.html_end_plus_one.load(Ordering::Relaxed);
        end_plus_one
            .checked_sub(1)
            .map(|at| Place { at, in_head: false })
    }
}

/// The locator's selector, parsed once per process rather than once per page.
static EVERY_ELEMENT: LazyLock<Option<Selector>> = LazyLock::new(|| "*".parse().ok());

/// lol_html's output is not used (see the module comment).
struct Discard;

impl OutputSink for Discard {
    fn handle_chunk(&mut self, _: &[u8]) {}
}

enum Step {
    Found(Place),
    More,
    Failed,
}

/// The parser, until it has found the place or failed.
struct Locator {
    /// `None` once it returned an error: it must not be used again.
    parser: Option<send::HtmlRewriter<'static, Discard>>,
    found: Arc<Found>,
}

impl Locator {
    fn new(encoding: AsciiCompatibleEncoding, memory: usize) -> Option<Self> {
        let selector = EVERY_ELEMENT.as_ref()?;
        let found = Arc::new(Found::default());
        let spot = Arc::clone(&found);
        let handlers = send::ElementContentHandlers::default().element(
            move |element: &mut send::Element<'_, '_>| {
                if spot.get().is_some() {
                    return Ok(());
                }
                let name = element.tag_name();
                let tag = element.source_location().bytes();
                if name.eq_ignore_ascii_case("html") {
                    spot.saw_html(tag.end);
                    return Ok(());
                }
                spot.set(if name.eq_ignore_ascii_case("head") {
                    Place {
                        at: tag.end,
                        in_head: true,
                    }
                } else {
                    Place {
                        at: tag.start,
                        in_head: false,
                    }
                });
                Ok(())
            },
        );
        let settings = send::Settings::new_send()
            .append_element_content_handler((Cow::Borrowed(selector), handlers))
            .with_encoding(encoding)
            .with_memory_settings(MemorySettings::new().with_max_allowed_memory_usage(memory));
        Some(Self {
            parser: Some(send::HtmlRewriter::new(settings, Discard)),
            found,
        })
    }

    fn feed(&mut self, bytes: &[u8]) -> Step {
        let Some(parser) = self.parser.as_mut() else {
            return Step::Failed;
        };
        let result = parser.write(bytes);
        // A place found before an error later in the same chunk stands: it was
        // found from input the parser understood.
        if let Some(place) = self.found.get() {
            return Step::Found(place);
        }
        match result {
            Ok(()) => Step::More,
            Err(_) => {
                self.parser = None;
                Step::Failed
            }
        }
    }

    /// At the end of the input, with no place found: right after `<html>` if the
    /// document had one, else none (no element at all: not a page).
    fn end_place(&self) -> Result<Place, Outcome> {
        match (&self.parser, self.found.after_html()) {
            (None, _) => Err(Outcome::Unparsable),
            (Some(_), Some(place)) => Ok(place),
            (Some(_), None) => Err(Outcome::NotFound),
        }
    }
}

/// The start most pages have, recognised without the parser: an optional UTF-8
/// byte-order mark, then, apart only by ASCII whitespace, an optional doctype
/// (`<!doctype` to the first `>`, which always ends a doctype), an optional `<html>`
/// start tag whose attributes are all well-formed (see [`html_attributes`]), and
/// `<head>` itself, any case. Returns the offset right after `<head>`, where the
/// parser would put the tag too; `None` for anything else, or when `input` ends
/// before `<head>`: the parser decides those.
fn quick_place(input: &[u8]) -> Option<usize> {
    fn starts(input: &[u8], at: usize, prefix: &[u8]) -> bool {
        input
            .get(at..)
            .and_then(|rest| rest.get(..prefix.len()))
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    }
    let skip_space = |at: usize| {
        at + input
            .get(at..)
            .map_or(0, |rest| rest.iter().take_while(|b| space(b)).count())
    };
    let mut at = skip_space(if input.starts_with(b"\xef\xbb\xbf") {
        3
    } else {
        0
    });
    if starts(input, at, b"<!doctype") {
        let end = input.get(at..)?.iter().position(|&b| b == b'>')?;
        at = skip_space(at + end + 1);
    }
    if starts(input, at, b"<html") {
        at = skip_space(at + 5 + html_attributes(input.get(at + 5..)?)?);
    }
    starts(input, at, b"<head>").then_some(at + 6)
}

fn space(byte: &u8) -> bool {
    matches!(byte, b'\t' | b'\n' | b'\x0c' | b'\r' | b' ')
}

/// The length of the rest of an `<html` start tag up to and including its `>`, if
/// it is only whitespace-separated attributes without parse errors: a name of ASCII
/// letters, digits, `-`, `_`, `:` or `.`, optionally `=` right after it and a value,
/// either quoted (`"…"` or `'…'`, where a `>` is text) or unquoted (no whitespace,
/// quotes, `<`, `=`, `>` or backtick). Anything else (`/>`, stray quotes, spaces
/// around `=`) is `None`.
fn html_attributes(tag: &[u8]) -> Option<usize> {
    let count = |from: usize, accept: fn(&u8) -> bool| {
        tag.get(from..)
            .map_or(0, |rest| rest.iter().take_while(|b| accept(b)).count())
    };
    let mut at = 0;
    loop {
        let gap = count(at, space);
        if *tag.get(at + gap)? == b'>' {
            return Some(at + gap + 1);
        }
        if gap == 0 {
            return None;
        }
        at += gap;
        let name = count(at, |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.')
        });
        if name == 0 {
            return None;
        }
        at += name;
        if tag.get(at) != Some(&b'=') {
            continue;
        }
        at += 1;
        match *tag.get(at)? {
            quote @ (b'"' | b'\'') => {
                let length = tag.get(at + 1..)?.iter().position(|&b| b == quote)?;
                at += length + 2;
            }
            _ => {
                let value = count(at, |b| {
                    !space(b) && !matches!(b, b'"' | b'\'' | b'<' | b'=' | b'>' | b'`')
                });
                if value == 0 {
                    return None;
                }
                at += value;
            }
        }
    }
}

enum Decision {
    Splice(Place),
    Pass(Outcome),
}

/// Input held while the place is sought: the upstream's frames as they came.
struct Holding {
    /// Made when the input needs it: not for a page [`quick_place`] settles.
    locator: Option<Locator>,
    encoding: AsciiCompatibleEncoding,
    /// lol_html's memory cap.
    memory: usize,
    held: Vec<Bytes>,
    /// Bytes in `held`.
    len: usize,
    /// How much of the input the locator has seen.
    fed: usize,
    /// Where feeding resumes: the index in `held` of the frame holding byte `fed`,
    /// and `fed`'s offset in it.
    cursor: (usize, usize),
    /// The byte-order mark has been checked.
    sniffed: bool,
}

impl Holding {
    fn new(encoding: AsciiCompatibleEncoding, memory: usize) -> Self {
        Self {
            locator: None,
            encoding,
            memory,
            held: Vec::new(),
            len: 0,
            fed: 0,
            cursor: (0, 0),
            sniffed: false,
        }
    }

    /// Holds a frame. `held` is bounded: bytes past [`LIMIT`] end the search, empty
    /// frames are not held, and a frame under [`SMALL_FRAME`] bytes is appended to
    /// the last held one while that is under [`MERGED_FRAME`] (copying the small
    /// frame once), so at most about `2 * LIMIT / SMALL_FRAME` frames are held
    /// however finely the upstream (or a decoder) slices the page. Offsets into the
    /// last frame stay valid, so the feeding cursor does too.
    fn take(&mut self, data: Bytes) -> Option<Decision> {
        if !data.is_empty() {
            self.len = self.len.saturating_add(data.len());
            match self.held.last_mut() {
                Some(last) if data.len() < SMALL_FRAME && last.len() < MERGED_FRAME => {
                    let mut merged = match mem::take(last).try_into_mut() {
                        Ok(merged) => merged,
                        // The upstream's own buffer: copied once, then ours.
                        Err(shared) => BytesMut::from(&shared[..]),
                    };
                    merged.extend_from_slice(&data);
                    *last = merged.freeze();
                }
                _ => self.held.push(data),
            }
        }
        self.advance(false)
    }

    fn finish(&mut self) -> Decision {
        self.advance(true)
            .unwrap_or(Decision::Pass(Outcome::NotFound))
    }

    /// The first two bytes of the input, whichever frames they came in.
    fn first_two(&self) -> [Option<u8>; 2] {
        let mut bytes = self.held.iter().flat_map(|frame| frame.iter().copied());
        [bytes.next(), bytes.next()]
    }

    fn advance(&mut self, eof: bool) -> Option<Decision> {
        if !self.sniffed {
            if self.len < 2 && !eof {
                return None;
            }
            self.sniffed = true;
            if let [Some(a), Some(b)] = self.first_two() {
                if [a, b] == [0xfe, 0xff] || [a, b] == [0xff, 0xfe] {
                    return Some(Decision::Pass(Outcome::Unparsable));
                }
            }
        }
        if self.fed == 0 && self.locator.is_none() {
            // The common page start needs no parser (see `quick_place`).
            if let Some(at) = self.held.first().and_then(|first| quick_place(first)) {
                if at <= LIMIT {
                    return Some(Decision::Splice(Place { at, in_head: true }));
                }
            }
        }
        let end = self.len.min(LIMIT);
        while self.fed < end {
            let (index, offset) = self.cursor;
            let Some(frame) = self.held.get(index) else {
                break;
            };
            if offset >= frame.len() {
                self.cursor = (index.saturating_add(1), 0);
                continue;
            }
            let step = self.fed.clamp(FIRST_STEP, MAX_STEP);
            let take = step.min(end - self.fed).min(frame.len() - offset);
            let locator = match &mut self.locator {
                Some(locator) => locator,
                empty => match Locator::new(self.encoding, self.memory) {
                    Some(locator) => empty.insert(locator),
                    None => return Some(Decision::Pass(Outcome::Unparsable)),
                },
            };
            let step = locator.feed(&frame[offset..offset + take]);
            self.fed += take;
            self.cursor = (index, offset + take);
            match step {
                Step::Found(place) => return Some(Decision::Splice(place)),
                Step::Failed => return Some(Decision::Pass(Outcome::Unparsable)),
                Step::More => {}
            }
        }
        if self.fed < self.len || self.fed >= LIMIT {
            return Some(Decision::Pass(Outcome::NotFound));
        }
        if eof {
            return Some(match self.locator.as_ref().map(Locator::end_place) {
                Some(Ok(place)) => Decision::Splice(place),
                Some(Err(outcome)) => Decision::Pass(outcome),
                // Nothing was fed: an empty body.
                None => Decision::Pass(Outcome::NotFound),
            });
        }
        None
    }
}

enum State {
    Holding(Box<Holding>),
    Passing,
    Finished,
}

/// What goes out next, and the report.
struct Out {
    queue: VecDeque<Frame<Bytes>>,
    /// Sent after `queue` (an upstream error that arrived while holding).
    error: Option<BoxError>,
    tag: Bytes,
    report: Option<Report>,
}

impl Out {
    fn report(&mut self, outcome: Outcome) {
        if let Some(report) = self.report.take() {
            report(outcome);
        }
    }

    fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.queue.push_back(Frame::data(bytes));
        }
    }

    fn apply(&mut self, decision: Decision, held: Holding) {
        match decision {
            Decision::Splice(place) if place.at <= held.len => {
                let mut tag = Some(if place.in_head {
                    self.tag.clone()
                } else {
                    Bytes::from([&b"<head>"[..], &self.tag, b"</head>"].concat())
                });
                // Bytes before the place still to go out ahead of the tag.
                let mut before = place.at;
                for frame in held.held {
                    match tag.take() {
                        Some(placed) if before <= frame.len() => {
                            self.push(frame.slice(..before));
                            self.push(placed);
                            self.push(frame.slice(before..));
                        }
                        unplaced => {
                            before -= frame.len().min(before);
                            tag = unplaced;
                            self.push(frame);
                        }
                    }
                }
                // Only an empty input gets here with the tag unplaced.
                if let Some(tag) = tag {
                    self.push(tag);
                }
                self.report(Outcome::Injected);
            }
            // An offset past the input would be a parser bug; pass rather than trust it.
            Decision::Splice(_) => {
                for frame in held.held {
                    self.push(frame);
                }
                self.report(Outcome::Unparsable);
            }
            Decision::Pass(outcome) => {
                for frame in held.held {
                    self.push(frame);
                }
                self.report(outcome);
            }
        }
    }
}

/// The body returned by [`inject`](super::inject).
pub(crate) struct Injecting {
    inner: ProxyBody,
    state: State,
    out: Out,
}

impl Injecting {
    pub(crate) fn new(
        inner: ProxyBody,
        encoding: AsciiCompatibleEncoding,
        tag: String,
        report: Option<Report>,
    ) -> Self {
        Self::with_parser_memory(inner, encoding, tag, report, PARSER_MEMORY)
    }

    fn with_parser_memory(
        inner: ProxyBody,
        encoding: AsciiCompatibleEncoding,
        tag: String,
        report: Option<Report>,
        memory: usize,
    ) -> Self {
        let out = Out {
            queue: VecDeque::new(),
            error: None,
            tag: Bytes::from(tag),
            report,
        };
        let state = State::Holding(Box::new(Holding::new(encoding, memory)));
        Self { inner, state, out }
    }
}

impl Body for Injecting {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.out.queue.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if let Some(error) = this.out.error.take() {
                return Poll::Ready(Some(Err(error)));
            }
            let holding = match &mut this.state {
                State::Passing => return Pin::new(&mut this.inner).poll_frame(cx),
                State::Finished => return Poll::Ready(None),
                State::Holding(holding) => holding,
            };
            // (decision, state after it, a frame to send after the held bytes)
            let (decision, next, after) = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match holding.take(data) {
                        Some(decision) => (decision, State::Passing, None),
                        None => continue,
                    },
                    // Trailers end the data: decide as at the end, then send them.
                    Err(trailers) => (holding.finish(), State::Passing, Some(trailers)),
                },
                Some(Err(error)) => {
                    this.out.error = Some(error);
                    (Decision::Pass(Outcome::Failed), State::Finished, None)
                }
                None => (holding.finish(), State::Finished, None),
            };
            if let State::Holding(holding) = mem::replace(&mut this.state, next) {
                this.out.apply(decision, *holding);
            }
            if let Some(trailers) = after {
                this.out.queue.push_back(trailers);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.out.queue.is_empty()
            && self.out.error.is_none()
            && match &self.state {
                State::Holding(_) => false,
                State::Passing => self.inner.is_end_stream(),
                State::Finished => true,
            }
    }
}

impl Drop for Injecting {
    /// A body dropped before the decision (client gone) still reports, once.
    fn drop(&mut self) {
        self.out.report(Outcome::Abandoned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::testing::body_of;
    use http_body_util::BodyExt;
    use std::sync::Mutex;

    fn big_page() -> Bytes {
        let rows = "<tr><td>1</td><td>lorem ipsum</td></tr>\n".repeat(2600);
        Bytes::from(format!(
            "<!doctype html><html><head><title>t</title></head><body><table>{rows}</table>"
        ))
    }

    /// The parser stops at the step that finds the place: a 100 KiB page that arrives
    /// as one frame is parsed for its first [`FIRST_STEP`] bytes only.
    #[test]
    fn the_parser_sees_no_byte_past_the_step_that_finds_the_place() {
        // A comment first: not a start `quick_place` settles, so the parser runs.
        let page = [&b"<!-- x -->"[..], &big_page()].concat();
        assert!(page.len() > 100 * 1024);
        let mut holding = Holding::new(AsciiCompatibleEncoding::utf_8(), PARSER_MEMORY);
        let at = "<!-- x --><!doctype html><html><head>".len();
        assert!(matches!(
            holding.take(Bytes::from(page)),
            Some(Decision::Splice(Place { at: found, in_head: true })) if found == at
        ));
        assert_eq!(holding.fed, FIRST_STEP);

        // A place further in takes doubling steps, each only as far as needed.
        let late = format!("<!--{}--><head>", "c".repeat(3000)) + &"<p>x</p>".repeat(10_000);
        let mut holding = Holding::new(AsciiCompatibleEncoding::utf_8(), PARSER_MEMORY);
        assert!(matches!(
            holding.take(Bytes::from(late)),
            Some(Decision::Splice(_))
        ));
        assert_eq!(holding.fed, 4096);
    }

    /// The held list is bounded however the page is sliced: empty frames are not
    /// held, and tiny ones are merged (an upstream trickling a page byte by byte
    /// before `<head>` cannot grow the list to one entry per byte).
    #[tokio::test]
    async fn the_held_frames_are_bounded() {
        let mut holding = Holding::new(AsciiCompatibleEncoding::utf_8(), PARSER_MEMORY);
        assert!(holding.take(Bytes::from_static(b"<!-- a")).is_none());
        for _ in 0..100_000 {
            assert!(holding.take(Bytes::new()).is_none());
            assert!(holding.take(Bytes::from_static(b"b")).is_none());
        }
        assert!(
            holding.held.len() <= 2 * 100_000 / MERGED_FRAME + 1,
            "{}",
            holding.held.len()
        );
        let at = 6 + 100_000 + 4 + 6;
        assert!(matches!(
            holding.take(Bytes::from_static(b" --><head>")),
            Some(Decision::Splice(Place { at: found, in_head: true })) if found == at
        ));

        // And the output is still the input plus the tag, byte for byte.
        let mut input = b"<!-- a".to_vec();
        let mut frames = vec![Ok(Frame::data(Bytes::from_static(b"<!-- a")))];
        for i in 0..5000u32 {
            let piece = Bytes::from(vec![b'a' + (i % 26) as u8; (i % 3) as usize]);
            input.extend_from_slice(&piece);
            frames.push(Ok(Frame::data(piece)));
        }
        input.extend_from_slice(b" --><head></head>");
        frames.push(Ok(Frame::data(Bytes::from_static(b" --><head></head>"))));
        let body = Injecting::new(
            crate::inject::testing::frames(frames),
            AsciiCompatibleEncoding::utf_8(),
            "<script></script>".into(),
            None,
        );
        let output = body.collect().await.unwrap().to_bytes();
        let head = input.len() - "</head>".len();
        assert_eq!(
            output,
            [&input[..head], b"<script></script>", b"</head>"].concat()
        );
    }

    /// The usual page starts are placed without making a parser at all.
    #[test]
    fn common_page_starts_need_no_parser() {
        for start in [
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>",
            "<!doctype html><html><head>",
            "\u{feff}<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\r\n<html xmlns=http://www.w3.org/1999/xhtml>\r\n<HEAD>",
            "<html>\n  <head>",
            "<head>",
        ] {
            let page = format!("{start}<title>t</title></head><body>x</body></html>");
            let mut holding = Holding::new(AsciiCompatibleEncoding::utf_8(), PARSER_MEMORY);
            let decision = holding.take(Bytes::from(page));
            assert!(
                matches!(decision, Some(Decision::Splice(Place { at, in_head: true })) if at == start.len()),
                "{start:?}"
            );
            assert!(holding.locator.is_none(), "{start:?}: a parser was made");
        }
    }

    /// Where the parser would put the tag, from the whole input.
    fn parsed_place(input: &[u8]) -> Result<Place, Outcome> {
        let mut locator = Locator::new(AsciiCompatibleEncoding::utf_8(), PARSER_MEMORY).unwrap();
        match locator.feed(input) {
            Step::Found(place) => Ok(place),
            Step::Failed => Err(Outcome::Unparsable),
            Step::More => locator.end_place(),
        }
    }

    const PIECES: [&str; 30] = [
        "\u{feff}",
        " ",
        "\n",
        "\t",
        "<!doctype html>",
        "<!DOCTYPE html PUBLIC \"-//x>y\">",
        "<!doctype",
        "<html>",
        "<html lang=en>",
        "<HTML\n>",
        "<html a='>'>",
        "<html/>",
        "<html lang=\"en\" class='a b'>",
        "<html a=\"x\"b>",
        "<html a = b>",
        "<html a=`b`>",
        "<html\"a\">",
        "<html lang=\"de\"",
        "<htmlx>",
        "<head>",
        "<HEAD>",
        "<header>",
        "<head >",
        "<!-- c -->",
        "<title>",
        "x",
        "<body>",
        ">",
        "<",
        "\"",
    ];

    proptest::proptest! {
        /// Whenever `quick_place` answers, the parser agrees.
        #[test]
        fn quick_place_agrees_with_the_parser(pieces in proptest::collection::vec(0..PIECES.len(), 0..7)) {
            let input: String = pieces.iter().map(|&i| PIECES[i]).collect();
            if let Some(at) = quick_place(input.as_bytes()) {
                proptest::prop_assert_eq!(
                    parsed_place(input.as_bytes()),
                    Ok(Place { at, in_head: true }),
                    "{:?}", input
                );
            }
        }
    }

    /// Every piece that can start a page is placed by `quick_place` only where the
    /// parser finds the same place (a fixed sample of the property above).
    #[test]
    fn quick_place_known_answers() {
        let cases: [(&str, Option<usize>); 14] = [
            ("<!doctype html><html><head>", Some(27)),
            ("  <head>", Some(8)),
            ("<!doctype html>x<head>", None),
            ("<!-- c --><head>", None),
            ("<html a='>'><head>", Some(18)),
            ("<html lang=\"en\" data-x=y>\n<head>", Some(32)),
            ("<html a=\"x\"b><head>", None),
            ("<html a = b><head>", None),
            ("<html/><head>", None),
            ("<header>", None),
            ("<htmlx><head>", None),
            ("<!doctype html><html", None),
            ("<!DOCTYPE html PUBLIC \"-//x>y\"><head>", None),
            ("<!DOCTYPE html PUBLIC \"-//x y\">\n<head>", Some(38)),
        ];
        for (input, expected) in cases {
            assert_eq!(quick_place(input.as_bytes()), expected, "{input:?}");
            if let Some(at) = expected {
                assert_eq!(
                    parsed_place(input.as_bytes()),
                    Ok(Place { at, in_head: true })
                );
            }
        }
    }

    /// The output is the upstream's own frames: the frame the place falls in is split
    /// into two slices of the same buffer around the tag, nothing is copied.
    #[tokio::test]
    async fn frames_pass_without_a_copy() {
        let page = big_page();
        let tail = Bytes::from_static(b"</body></html>");
        let body = crate::inject::testing::frames(vec![
            Ok(Frame::data(page.clone())),
            Ok(Frame::data(tail.clone())),
        ]);
        let mut body = Injecting::new(
            body,
            AsciiCompatibleEncoding::utf_8(),
            "<script></script>".into(),
            None,
        );
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.unwrap().into_data().unwrap());
        }
        let at = "<!doctype html><html><head>".len();
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].as_ptr(), page.as_ptr());
        assert_eq!(frames[0].len(), at);
        assert_eq!(frames[1], "<script></script>");
        assert_eq!(frames[2].as_ptr(), page[at..].as_ptr());
        assert_eq!(frames[2].len(), page.len() - at);
        assert_eq!(frames[3].as_ptr(), tail.as_ptr());
    }

    /// A parser that fails (here: its memory cap) is dropped, never written to or
    /// ended again (lol_html would panic), and the input goes out unchanged.
    #[tokio::test]
    async fn parser_error_passes_the_input_through() {
        let mut locator = Locator::new(AsciiCompatibleEncoding::utf_8(), 4096).unwrap();
        let huge = format!("<html data-x=\"{}", "y".repeat(64 * 1024));
        assert!(matches!(locator.feed(huge.as_bytes()), Step::Failed));
        assert!(matches!(locator.feed(b"\"><head>"), Step::Failed));
        assert_eq!(locator.end_place(), Err(Outcome::Unparsable));

        let input = format!("{huge}\"><head></head>");
        let chunks = input.as_bytes().chunks(1000).map(<[u8]>::to_vec).collect();
        let seen = Arc::new(Mutex::new(None));
        let report = Arc::clone(&seen);
        let body = Injecting::with_parser_memory(
            body_of(chunks),
            AsciiCompatibleEncoding::utf_8(),
            "<script></script>".into(),
            Some(Box::new(move |o| *report.lock().unwrap() = Some(o))),
            4096,
        );
        let output = body.collect().await.unwrap().to_bytes();
        assert_eq!(output, input.as_bytes());
        assert_eq!(*seen.lock().unwrap(), Some(Outcome::Unparsable));
    }
}
