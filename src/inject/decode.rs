//! Undoing a response's content coding so its HTML can be read.
//!
//! [`prefer_identity`](super::prefer_identity) asks upstreams for plain HTML, but some
//! compress regardless. Such a body is decoded here, streaming: compressed frames go
//! through a `StreamReader` into an `async-compression` decoder and come out as
//! frames of at most [`CHUNK`] bytes, so memory stays bounded by the codec's window,
//! not the body's size. The caller removes `Content-Encoding`.
//!
//! A corrupt or truncated stream ends the body with a [`DecodeError`] (never a panic).
//! Trailers of a decoded body are dropped: they described the encoded message.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_compression::tokio::bufread::{BrotliDecoder, DeflateDecoder, GzipDecoder, ZlibDecoder};
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use http_body_util::combinators::MapErr;
use http_body_util::{BodyDataStream, BodyExt};
use tokio::io::{AsyncBufRead, AsyncRead};
use tokio_util::io::{poll_read_buf, StreamReader};

use crate::web::body::{BoxError, ProxyBody};

/// Size of the decoded frames (and of each read from the decoder).
const CHUNK: usize = 16 * 1024;

/// A content coding this module can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip` / `x-gzip` (RFC 1952); concatenated members are all decoded.
    Gzip,
    /// `deflate`: zlib (RFC 1950) as the spec says, or raw deflate (RFC 1951) as some
    /// servers send it; the first byte tells them apart.
    Deflate,
    /// `br` (RFC 7932).
    Brotli,
}

impl Coding {
    /// The coding a `Content-Encoding` token names, if it is one of ours.
    pub(crate) fn from_token(token: &str) -> Option<Self> {
        if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Some(Self::Gzip)
        } else if token.eq_ignore_ascii_case("deflate") {
            Some(Self::Deflate)
        } else if token.eq_ignore_ascii_case("br") {
            Some(Self::Brotli)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
            Self::Brotli => "br",
        }
    }

    /// The decoder for this coding over `source`, whose first byte is `first`.
    fn decoder(self, source: Source, first: u8) -> Pin<Box<dyn AsyncRead + Send>> {
        match self {
            Self::Gzip => {
                let mut decoder = GzipDecoder::new(source);
                decoder.multiple_members(true);
                Box::pin(decoder)
            }
            // A zlib stream starts with CMF: method 8 (deflate) in the low nibble and a
            // window of at most 2^15 in the high one. Raw deflate can only start like
            // that with a stored block whose padding bits are not zero, which encoders
            // do not write.
            Self::Deflate if first & 0x0f == 8 && first >> 4 <= 7 => {
                Box::pin(ZlibDecoder::new(source))
            }
            Self::Deflate => Box::pin(DeflateDecoder::new(source)),
            Self::Brotli => Box::pin(BrotliDecoder::new(source)),
        }
    }
}

/// Why a decoded body ended early.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode the {coding} response body: {source}")]
pub struct DecodeError {
    coding: &'static str,
    #[source]
    source: io::Error,
}

/// The compressed body as a buffered reader (upstream errors become `io::Error`s and
/// come out of the decoder as such).
type Source = StreamReader<BodyDataStream<MapErr<ProxyBody, fn(BoxError) -> io::Error>>, Bytes>;

/// `body` with `coding` undone.
pub(crate) fn decode(body: ProxyBody, coding: Coding) -> ProxyBody {
    let to_io: fn(BoxError) -> io::Error = io::Error::other;
    let source = StreamReader::new(body.map_err(to_io).into_data_stream());
    Decoded {
        coding,
        state: State::Probe(Some(source)),
        buf: BytesMut::new(),
    }
    .boxed_unsync()
}

struct Decoded {
    coding: Coding,
    state: State,
    buf: BytesMut,
}

enum State {
    /// Waiting for the first compressed byte: it picks zlib or raw deflate, and a body
    /// with no bytes at all is passed on as empty instead of failing as truncated
    /// (some servers label empty bodies with a coding).
    Probe(Option<Source>),
    Running(Pin<Box<dyn AsyncRead + Send>>),
    Done,
}

impl Decoded {
    fn fail(&mut self, source: io::Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = State::Done;
        Poll::Ready(Some(Err(Box::new(DecodeError {
            coding: self.coding.name(),
            source,
        }))))
    }
}

impl Body for Decoded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Probe(slot) => {
                    let Some(source) = slot.as_mut() else {
                        this.state = State::Done;
                        continue;
                    };
                    let first = match ready!(Pin::new(source).poll_fill_buf(cx)) {
                        Ok(buf) => buf.first().copied(),
                        Err(error) => return this.fail(error),
                    };
                    match (first, slot.take()) {
                        (Some(first), Some(source)) => {
                            this.state = State::Running(this.coding.decoder(source, first));
                        }
                        _ => this.state = State::Done,
                    }
                }
                State::Running(reader) => {
                    if this.buf.capacity() < CHUNK {
                        this.buf.reserve(CHUNK);
                    }
                    return match ready!(poll_read_buf(reader.as_mut(), cx, &mut this.buf)) {
                        Ok(0) => {
                            this.state = State::Done;
                            Poll::Ready(None)
                        }
                        Ok(_) => Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze())))),
                        Err(error) => this.fail(error),
                    };
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use crate::inject::testing::{body_of, frames};

    async fn collect(body: ProxyBody) -> Result<Vec<u8>, BoxError> {
        Ok(body.collect().await?.to_bytes().to_vec())
    }

    const TEXT: &[u8] =
        b"<!doctype html><html><head><title>t</title></head><body>hello</body></html>";

    #[tokio::test]
    async fn raw_deflate_is_tolerated() {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(TEXT).unwrap();
        let raw = encoder.finish().unwrap();
        let out = collect(decode(body_of(vec![raw]), Coding::Deflate)).await;
        assert_eq!(out.unwrap(), TEXT);
    }

    #[tokio::test]
    async fn concatenated_gzip_members() {
        let mut all = Vec::new();
        for part in [&TEXT[..10], &TEXT[10..]] {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(part).unwrap();
            all.extend(encoder.finish().unwrap());
        }
        let chunks = all.chunks(3).map(<[u8]>::to_vec).collect();
        let out = collect(decode(body_of(chunks), Coding::Gzip)).await;
        assert_eq!(out.unwrap(), TEXT);
    }

    #[tokio::test]
    async fn empty_body_stays_empty() {
        for coding in [Coding::Gzip, Coding::Deflate, Coding::Brotli] {
            let out = collect(decode(body_of(vec![]), coding)).await;
            assert_eq!(out.unwrap(), b"");
        }
    }

    #[tokio::test]
    async fn truncated_stream_is_an_error() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(TEXT).unwrap();
        let mut gz = encoder.finish().unwrap();
        gz.truncate(gz.len() - 6);
        let error = collect(decode(body_of(vec![gz]), Coding::Gzip))
            .await
            .unwrap_err();
        assert!(error.is::<DecodeError>(), "{error}");
    }

    #[tokio::test]
    async fn upstream_error_surfaces() {
        let body = frames(vec![
            Ok(Frame::data(Bytes::from_static(&[0x1f, 0x8b]))),
            Err("upstream reset".into()),
        ]);
        let error = collect(decode(body, Coding::Gzip)).await.unwrap_err();
        assert!(error.to_string().contains("upstream reset"), "{error}");
    }
}
