//! A small HTTP/1.1 server for the control API on glommio: keep-alive, Content-Length bodies only,
//! a size limit on heads and bodies, bearer-token or loopback-only access.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

/// Request heads larger than this are refused (431).
pub const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Request bodies larger than this are refused (413); an injected message fits well below.
pub const BODY_BYTES_MAX: usize = 80 * 1024 * 1024;
/// An idle keep-alive connection is closed after this long; also the deadline of each read.
const IDLE_TIMEOUT_MS: u64 = 60_000;
/// A whole request (head and body) must arrive within this long: a client that trickles bytes
/// cannot hold a connection for ever.
const REQUEST_TIMEOUT_MS: u64 = 120_000;
/// Each write of a response must finish within this long (a client that stops reading).
const WRITE_TIMEOUT_MS: u64 = 30_000;
/// API connections open at once, at most; more are answered 503 and closed.
pub const API_CONNECTIONS_MAX: usize = 64;
/// After a failed accept (no file descriptors left...), wait this long before the next one.
const ACCEPT_RETRY_MS: u64 = 100;
/// A connection's read buffer is given back to the allocator when a large body made it bigger.
const BUFFER_KEEP_BYTES: usize = 64 * 1024;

pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    /// A query parameter's value, undecoded (API parameters are numbers and names).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn json(status: u16, value: serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: value.to_string(),
        }
    }

    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, serde_json::json!({ "error": message.into() }))
    }

    pub fn text(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "text/plain; version=0.0.4",
            body,
        }
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        let reason = match self.status {
            200 => "OK",
            202 => "Accepted",
            204 => "No Content",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            413 => "Payload Too Large",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Status",
        };
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
                self.status,
                self.content_type,
                self.body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(self.body.as_bytes());
    }
}

pub type Handler = Rc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response>>>>;

/// The one path served without the API token (RFC 8058 one-click unsubscribe).
pub const UNSUBSCRIBE_PATH_PREFIX: &str = "/v1/unsubscribe/";
/// A body on the public path at most.
const PUBLIC_BODY_BYTES_MAX: usize = 1024;

/// The bearer token in force: read per request, so a reload that changes it applies at once.
pub type TokenSource = Rc<dyn Fn() -> String>;

/// Accepts API connections (at most `API_CONNECTIONS_MAX` at once).
pub async fn serve(listener: TcpListener, token: TokenSource, handler: Handler) {
    let open = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let mut stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends would fail again at once: pause instead of spinning.
                log::warn!("api accept: {e}");
                glommio::timer::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let token = token.clone();
        let open = open.clone();
        glommio::spawn_local(async move {
            if open.get() >= API_CONNECTIONS_MAX {
                let mut out = Vec::new();
                Response::error(503, "too many API connections").write_to(&mut out);
                let _ = stream.set_write_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)));
                let _ = stream.write_all(&out).await;
                return;
            }
            open.set(open.get() + 1);
            if let Err(e) = connection(stream, &token, handler).await {
                log::debug!("api connection: {e}");
            }
            open.set(open.get() - 1);
        })
        .detach();
    }
}

enum Parsed {
    /// `close`: the client asked for `Connection: close` (or spoke HTTP/1.0 without keep-alive).
    Complete {
        request: Request,
        consumed: usize,
        close: bool,
    },
    Partial,
    Refused(Response),
}

fn parse(buf: &[u8], peer: SocketAddr, token: &str) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > HEAD_BYTES_MAX => {
            return Parsed::Refused(Response::error(431, "request head too large"));
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Refused(Response::error(400, format!("bad request: {e}"))),
    };
    let mut content_length = 0usize;
    let mut authorization = None;
    let mut close = req.version == Some(0);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            let value = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            close = value.split(',').any(|t| t.trim() == "close")
                || (close && !value.split(',').any(|t| t.trim() == "keep-alive"));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(n) => content_length = n,
                None => return Parsed::Refused(Response::error(400, "bad Content-Length")),
            }
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(String::from_utf8_lossy(h.value).into_owned());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Refused(Response::error(400, "chunked bodies are not accepted"));
        }
    }
    if content_length > BODY_BYTES_MAX {
        return Parsed::Refused(Response::error(413, "request body too large"));
    }
    // One-click unsubscribe is posted by mailbox providers, who have no token: its path is public,
    // its token is its own proof, and its body (`List-Unsubscribe=One-Click`) is small.
    let public = req.method == Some("POST")
        && req
            .path
            .is_some_and(|p| p.starts_with(UNSUBSCRIBE_PATH_PREFIX) && !p.contains('?'));
    if public && content_length > PUBLIC_BODY_BYTES_MAX {
        return Parsed::Refused(Response::error(413, "request body too large"));
    }
    // The token is checked from the head: an unauthenticated client never gets its body read.
    if !public && !authorized(peer, authorization.as_deref(), token) {
        return Parsed::Refused(Response::error(401, "missing or wrong bearer token"));
    }
    if buf.len() < head_len + content_length {
        return Parsed::Partial;
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Parsed::Complete {
        request: Request {
            method: req.method.unwrap_or("GET").to_string(),
            path: path.to_string(),
            query: query.to_string(),
            authorization,
            body: buf[head_len..head_len + content_length].to_vec(),
            peer,
        },
        consumed: head_len + content_length,
        close,
    }
}

/// `parse` for the HTTP fuzz target (`fuzz/`): `Ok(None)` when more bytes are needed,
/// `Ok(Some((request, consumed, close)))` for a whole request, `Err(status)` for a refusal.
/// The peer is 127.0.0.1 or 192.0.2.1 (a remote address) as `loopback` says.
#[doc(hidden)]
pub fn parse_for_fuzzing(
    buf: &[u8],
    loopback: bool,
    token: &str,
) -> Result<Option<(Request, usize, bool)>, u16> {
    let peer = if loopback {
        SocketAddr::from(([127, 0, 0, 1], 9))
    } else {
        SocketAddr::from(([192, 0, 2, 1], 9))
    };
    match parse(buf, peer, token) {
        Parsed::Partial => Ok(None),
        Parsed::Complete {
            request,
            consumed,
            close,
        } => Ok(Some((request, consumed, close))),
        Parsed::Refused(response) => Err(response.status),
    }
}

fn authorized(peer: SocketAddr, authorization: Option<&str>, token: &str) -> bool {
    if token.is_empty() {
        return peer.ip().is_loopback();
    }
    authorization
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn connection(
    mut stream: TcpStream,
    token: &TokenSource,
    handler: Handler,
) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    stream.set_read_timeout(Some(Duration::from_millis(IDLE_TIMEOUT_MS)))?;
    stream.set_write_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)))?;
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    let mut request_started = None;
    loop {
        let (response, consumed, close) = match parse(&buf, peer, &token()) {
            Parsed::Partial => {
                let started = *request_started.get_or_insert_with(crate::clock::monotonic);
                let left = Duration::from_millis(REQUEST_TIMEOUT_MS)
                    .checked_sub(started.elapsed())
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
                let read =
                    glommio::timer::timeout(left, async { Ok(stream.read(&mut chunk).await?) });
                let n = read.await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
                continue;
            }
            Parsed::Refused(r) => (r, buf.len(), true),
            Parsed::Complete {
                request,
                consumed,
                close,
            } => (handler(request).await, consumed, close),
        };
        request_started = None;
        buf.drain(..consumed);
        if buf.capacity() > BUFFER_KEEP_BYTES && buf.len() <= BUFFER_KEEP_BYTES {
            buf.shrink_to(BUFFER_KEEP_BYTES);
        }
        out.clear();
        response.write_to(&mut out);
        stream.write_all(&out).await?;
        // A client that reads to the end (Connection: close, like `volley status`) waits for it.
        if close || matches!(response.status, 400 | 401 | 413 | 431) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn connection_close_is_seen() {
        let close = |raw: &[u8]| match parse(raw, peer(), "") {
            Parsed::Complete { close, .. } => close,
            _ => panic!("expected a complete request"),
        };
        assert!(close(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!close(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(close(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(!close(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn parses_body_and_query() {
        let raw = b"POST /v1/inject?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        match parse(raw, peer(), "") {
            Parsed::Complete {
                request, consumed, ..
            } => {
                assert_eq!(request.path, "/v1/inject");
                assert_eq!(request.query_param("x"), Some("1"));
                assert_eq!(request.body, b"{}");
                assert_eq!(consumed, raw.len());
            }
            _ => panic!("expected a complete request"),
        }
        assert!(matches!(
            parse(&raw[..raw.len() - 1], peer(), ""),
            Parsed::Partial
        ));
    }

    #[test]
    fn token_rules() {
        let remote: SocketAddr = "192.0.2.1:9".parse().unwrap();
        assert!(authorized(peer(), None, ""));
        assert!(!authorized(peer(), None, "t0ken"));
        assert!(authorized(peer(), Some("Bearer t0ken"), "t0ken"));
        assert!(!authorized(remote, None, ""));
        assert!(authorized(remote, Some("Bearer t0ken"), "t0ken"));
    }

    #[test]
    fn an_unauthorized_head_is_refused_before_its_body_arrives() {
        let head = b"POST /v1/inject HTTP/1.1\r\nContent-Length: 80000000\r\n\r\n";
        match parse(head, "192.0.2.1:9".parse().unwrap(), "t0ken") {
            Parsed::Refused(r) => assert_eq!(r.status, 401),
            _ => panic!("expected a refusal from the head alone"),
        }
        assert!(matches!(parse(head, peer(), ""), Parsed::Partial));
    }
}
