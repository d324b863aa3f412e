//! The first request head of every connection, checked before hyper reads it.
//!
//! hyper answers a head it cannot use (a malformed request line or header, a bad or conflicting
//! `Content-Length`, a transfer coding it does not frame, too many or too long headers, an
//! over-long URI) with a 400, 414 or 431 that has no body. Those requests get the API's JSON error
//! envelope here instead, and the connection closes. Only the first request of a connection is
//! checked: later requests on a kept-alive connection are framed by hyper alone, which still
//! answers a malformed one with an empty-bodied status and closes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::StatusCode;
use fleet_core::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{ApiError, ErrorBody};
use crate::routes::MAX_HEADER_BYTES;

/// hyper's default limit on the number of headers.
const MAX_HEADERS: usize = 100;
/// hyper refuses longer request targets with 414.
const MAX_URI_BYTES: usize = u16::MAX as usize - 1;
/// Room for the longest URI hyper takes and the most header bytes the API takes, with slack for
/// separators: a head that is still incomplete beyond this is refused.
const MAX_HEAD_BYTES: usize = MAX_URI_BYTES + MAX_HEADER_BYTES + 16 * 1024;

/// Accepts TCP connections whose first request head is checked by [`CheckedStream`].
#[derive(Debug)]
pub struct CheckedListener(pub TcpListener);

impl axum::serve::Listener for CheckedListener {
    type Io = CheckedStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (CheckedStream::new(stream), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        axum::serve::Listener::local_addr(&self.0)
    }
}

/// A connection that holds back its first request head until it is known to be usable.
#[derive(Debug)]
pub struct CheckedStream<S> {
    inner: S,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Reading the first head; the bytes so far.
    Checking(Vec<u8>),
    /// The head is usable: these bytes go to hyper before the connection's next ones.
    Replaying {
        bytes: Vec<u8>,
        at: usize,
    },
    /// The head is refused: the response is written, then the connection ends.
    Refusing {
        response: Vec<u8>,
        at: usize,
    },
    Passing,
    Ended,
}

/// What the bytes read so far say about the first head.
#[derive(Debug, PartialEq)]
enum Verdict {
    Incomplete,
    Usable,
    Refused(ErrorCode, String),
}

impl<S> CheckedStream<S> {
    pub fn new(inner: S) -> Self {
        CheckedStream { inner, state: State::Checking(Vec::new()) }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for CheckedStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Checking(head) => {
                    let mut chunk = [0u8; 8 * 1024];
                    let mut read = ReadBuf::new(&mut chunk);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                    if read.filled().is_empty() {
                        // The peer stopped sending: hyper sees what there is and ends the connection.
                        this.state = State::Replaying { bytes: std::mem::take(head), at: 0 };
                        continue;
                    }
                    head.extend_from_slice(read.filled());
                    this.state = match check_head(head) {
                        Verdict::Incomplete => continue,
                        Verdict::Usable => State::Replaying { bytes: std::mem::take(head), at: 0 },
                        Verdict::Refused(code, message) => {
                            tracing::debug!(%code, %message, "request head refused");
                            State::Refusing { response: refusal(code, message), at: 0 }
                        }
                    };
                }
                State::Replaying { bytes, at } => {
                    let n = out.remaining().min(bytes.len() - *at);
                    out.put_slice(&bytes[*at..*at + n]);
                    *at += n;
                    if *at == bytes.len() {
                        this.state = State::Passing;
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Refusing { response, at } => {
                    while *at < response.len() {
                        match ready!(Pin::new(&mut this.inner).poll_write(cx, &response[*at..])) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => *at += n,
                        }
                    }
                    // The peer may already be gone; either way the connection ends here.
                    let _ = ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
                    this.state = State::Ended;
                }
                State::Passing => return Pin::new(&mut this.inner).poll_read(cx, out),
                State::Ended => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CheckedStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Judges the first head as hyper would frame it.
fn check_head(bytes: &[u8]) -> Verdict {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Partial) if bytes.len() < MAX_HEAD_BYTES => Verdict::Incomplete,
        Ok(httparse::Status::Partial) => {
            let line_ended = bytes.windows(2).any(|w| w == b"\r\n") || bytes.contains(&b'\n');
            if line_ended {
                too_large_head()
            } else {
                Verdict::Refused(
                    ErrorCode::UriTooLong,
                    format!("the request target is longer than {MAX_URI_BYTES} bytes"),
                )
            }
        }
        Ok(httparse::Status::Complete(_)) => check_framing(&request),
        Err(httparse::Error::TooManyHeaders) => {
            Verdict::Refused(ErrorCode::HeadersTooLarge, format!("the request has more than {MAX_HEADERS} headers"))
        }
        Err(e) => Verdict::Refused(ErrorCode::InvalidRequest, format!("malformed request head: {e}")),
    }
}

fn too_large_head() -> Verdict {
    Verdict::Refused(
        ErrorCode::HeadersTooLarge,
        format!("the request head is longer than {MAX_HEAD_BYTES} bytes; headers may hold at most {MAX_HEADER_BYTES}"),
    )
}

/// The parts of a parsed head hyper refuses: an over-long target, a `Content-Length` that is not
/// one number, and a `Transfer-Encoding` whose last coding is not `chunked`.
fn check_framing(request: &httparse::Request<'_, '_>) -> Verdict {
    if request.path.is_some_and(|p| p.len() > MAX_URI_BYTES) {
        return Verdict::Refused(
            ErrorCode::UriTooLong,
            format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        );
    }
    let values = |name: &'static str| -> Vec<&[u8]> {
        request.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value).collect()
    };
    let mut length: Option<&[u8]> = None;
    for value in values("content-length") {
        let value = value.trim_ascii();
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 19 {
            let shown = String::from_utf8_lossy(value);
            return Verdict::Refused(ErrorCode::InvalidRequest, format!("Content-Length `{shown}` is not a number"));
        }
        if length.is_some_and(|first| first != value) {
            return Verdict::Refused(ErrorCode::InvalidRequest, "conflicting Content-Length headers".to_owned());
        }
        length = Some(value);
    }
    if let Some(last) = values("transfer-encoding").last().copied() {
        let coding = last.rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Verdict::Refused(
                ErrorCode::InvalidRequest,
                "Transfer-Encoding must end in `chunked` (no other coding frames a request body)".to_owned(),
            );
        }
    }
    Verdict::Usable
}

/// A complete HTTP/1.1 response carrying the error envelope, closing the connection.
fn refusal(code: ErrorCode, message: String) -> Vec<u8> {
    let error = ApiError::new(code, message);
    let body = serde_json::to_vec(&ErrorBody { error: &error }).unwrap_or_default();
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn refused_with(head: &[u8]) -> ErrorCode {
        match check_head(head) {
            Verdict::Refused(code, _) => code,
            other => panic!("{:?} was not refused: {other:?}", String::from_utf8_lossy(&head[..head.len().min(80)])),
        }
    }

    #[test]
    fn usable_heads_pass_and_partial_ones_wait() {
        let get = b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(check_head(get), Verdict::Usable);
        assert_eq!(check_head(&get[..20]), Verdict::Incomplete);
        let post = b"POST /v1/jobs HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(check_head(post), Verdict::Usable);
        let chunked = b"POST /v1/jobs HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(check_head(chunked), Verdict::Usable);
    }

    #[test]
    fn heads_hyper_would_refuse_without_a_body_are_refused_with_a_code() {
        assert_eq!(refused_with(b"GARBAGE\r\n\r\n"), ErrorCode::InvalidRequest);
        assert_eq!(refused_with(b"GET / HTTP/9.9\r\n\r\n"), ErrorCode::InvalidRequest);
        assert_eq!(refused_with(b"GET / HTTP/1.1\r\nBad Header: y\r\n\r\n"), ErrorCode::InvalidRequest);
        assert_eq!(refused_with(b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n"), ErrorCode::InvalidRequest);
        assert_eq!(
            refused_with(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"),
            ErrorCode::InvalidRequest
        );
        assert_eq!(refused_with(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), ErrorCode::InvalidRequest);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(refused_with(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), ErrorCode::HeadersTooLarge);
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI_BYTES));
        assert_eq!(refused_with(long_target.as_bytes()), ErrorCode::UriTooLong);
        let endless_target = format!("GET /{}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(refused_with(endless_target.as_bytes()), ErrorCode::UriTooLong);
        let endless_header = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(refused_with(endless_header.as_bytes()), ErrorCode::HeadersTooLarge);
    }

    /// A refused head gets a whole response with the envelope and the connection ends; a usable
    /// one reaches the reader byte for byte, followed by what the peer sends next.
    #[tokio::test]
    async fn the_stream_answers_refusals_itself_and_replays_usable_heads() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut checked = CheckedStream::new(server);
        client.write_all(b"GET / HTTP/1.1\r\nBad Header: y\r\n\r\n").await.unwrap();
        let mut seen = Vec::new();
        assert_eq!(checked.read_to_end(&mut seen).await.unwrap(), 0, "nothing reaches hyper");
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("header name"), "{body}");

        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut checked = CheckedStream::new(server);
        let head = b"POST /v1/jobs HTTP/1.1\r\nContent-Length: 2\r\n\r\n";
        client.write_all(&head[..10]).await.unwrap();
        client.write_all(&head[10..]).await.unwrap();
        client.write_all(b"{}").await.unwrap();
        client.shutdown().await.unwrap();
        let mut seen = Vec::new();
        checked.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, [&head[..], b"{}"].concat());
    }
}
