//! The HTTPS fetch of `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461 3.3): blocking,
//! on a thread of its own (`spawn`), never on a core. The host's addresses come from Volley's own
//! resolver (the caller resolves it on the core), so the fetch never asks the system resolver; the
//! certificate must be valid for `mta-sts.<domain>` (WebPKI and `[tls] trust_anchors`). Redirects
//! are not followed, only `200` with `text/plain` is taken, and every step (connect, handshake,
//! each read and write) runs within one deadline; what is read is bounded.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::policy::POLICY_BYTES_MAX;

/// The HTTP head (status line and headers) read at most.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Headers parsed at most.
const HEADERS_MAX: usize = 64;
const HTTPS_PORT: u16 = 443;
const PATH: &str = "/.well-known/mta-sts.txt";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("no address for {0}")]
    NoAddress(String),
    #[error("connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("{host}: {reason}")]
    Io { host: String, reason: String },
    /// The server's certificate did not verify for the policy host (TLS-RPT
    /// `sts-webpki-invalid`).
    #[error("{host}: {reason}")]
    Certificate { host: String, reason: String },
    #[error("{0}: no answer within the fetch timeout")]
    Timeout(String),
    #[error("HTTP status {0} (only 200 is taken; redirects are not followed)")]
    Status(u16),
    #[error("Content-Type {0:?} is not text/plain")]
    ContentType(String),
    #[error("malformed HTTP answer: {0}")]
    Malformed(String),
    #[error("answer over {0} bytes")]
    TooLarge(usize),
}

/// What to fetch.
#[derive(Clone)]
pub struct Request {
    /// The policy domain (the recipient domain).
    pub domain: String,
    /// The addresses of `mta-sts.<domain>`, from Volley's resolver, tried in order.
    pub addresses: Vec<IpAddr>,
    /// Verifies the certificate (Mozilla roots and trust anchors).
    pub tls: Arc<ClientConfig>,
    pub timeout: Duration,
    /// The port to connect to (443; another only in tests).
    pub port: u16,
}

impl Request {
    pub fn new(
        domain: &str,
        addresses: Vec<IpAddr>,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Request {
        Request {
            domain: domain.to_string(),
            addresses,
            tls,
            timeout,
            port: HTTPS_PORT,
        }
    }

    pub fn host(&self) -> String {
        format!("mta-sts.{}", self.domain)
    }
}

/// Fetches the policy body (blocking, within `request.timeout`).
pub fn fetch(request: &Request) -> Result<Vec<u8>, FetchError> {
    let host = request.host();
    let deadline = Instant::now() + request.timeout;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| FetchError::Timeout(host.clone()))
    };
    let mut socket = None;
    let mut last = FetchError::NoAddress(host.clone());
    for &ip in &request.addresses {
        let address = SocketAddr::new(ip, request.port);
        match TcpStream::connect_timeout(&address, remaining()?) {
            Ok(s) => {
                socket = Some(s);
                break;
            }
            Err(e) => {
                last = FetchError::Connect {
                    host: format!("{host} ({ip})"),
                    reason: e.to_string(),
                }
            }
        }
    }
    let socket = socket.ok_or(last)?;
    let io = |e: std::io::Error| {
        let certificate = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|tls| matches!(tls, rustls::Error::InvalidCertificate(_)));
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            FetchError::Timeout(host.clone())
        } else if certificate {
            FetchError::Certificate {
                host: host.clone(),
                reason: e.to_string(),
            }
        } else {
            FetchError::Io {
                host: host.clone(),
                reason: e.to_string(),
            }
        }
    };
    let name = ServerName::try_from(host.clone()).map_err(|e| FetchError::Io {
        host: host.clone(),
        reason: e.to_string(),
    })?;
    let connection =
        ClientConnection::new(request.tls.clone(), name).map_err(|e| FetchError::Io {
            host: host.clone(),
            reason: e.to_string(),
        })?;
    let mut stream = StreamOwned::new(connection, socket);
    let get = format!(
        "GET {PATH} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: volley\r\nAccept: text/plain\r\n\
         Connection: close\r\n\r\n"
    );
    stream
        .sock
        .set_write_timeout(Some(remaining()?))
        .map_err(io)?;
    stream
        .sock
        .set_read_timeout(Some(remaining()?))
        .map_err(io)?;
    stream.write_all(get.as_bytes()).map_err(io)?;
    stream.flush().map_err(io)?;
    let limit = HEAD_BYTES_MAX + POLICY_BYTES_MAX;
    let mut answer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        stream
            .sock
            .set_read_timeout(Some(remaining()?))
            .map_err(io)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            // A server that closes without close_notify: the body's length decides below.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io(e)),
        }
        if answer.len() > limit {
            return Err(FetchError::TooLarge(limit));
        }
        if let Some(body) = complete_body(&answer)? {
            return Ok(body);
        }
    }
    match complete_body(&answer)? {
        Some(body) => Ok(body),
        None => read_to_close(&answer),
    }
}

/// The head of an HTTP answer: its status, headers, and where the body starts.
struct Head {
    status: u16,
    content_type: Option<String>,
    content_length: Option<usize>,
    chunked: bool,
    body_at: usize,
}

fn head(answer: &[u8]) -> Result<Option<Head>, FetchError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let body_at = match response.parse(answer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if answer.len() > HEAD_BYTES_MAX => {
            return Err(FetchError::TooLarge(HEAD_BYTES_MAX));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(FetchError::Malformed(e.to_string())),
    };
    let status = response.code.unwrap_or(0);
    let value = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let content_length = match value("content-length") {
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| FetchError::Malformed(format!("Content-Length {v:?}")))?,
        ),
        None => None,
    };
    let chunked = value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    Ok(Some(Head {
        status,
        content_type: value("content-type"),
        content_length,
        chunked,
        body_at,
    }))
}

/// Checks what the head says before the body is used.
fn accept(head: &Head) -> Result<(), FetchError> {
    if head.status != 200 {
        return Err(FetchError::Status(head.status));
    }
    let media = head.content_type.as_deref().unwrap_or_default();
    let media_type = media.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("text/plain") {
        return Err(FetchError::ContentType(media.to_string()));
    }
    if head.content_length.is_some_and(|n| n > POLICY_BYTES_MAX) {
        return Err(FetchError::TooLarge(POLICY_BYTES_MAX));
    }
    Ok(())
}

/// The body once the answer holds all of it by its length (Content-Length or chunked); `None`
/// while more is to come (or when only the end of the connection ends it).
pub(crate) fn complete_body(answer: &[u8]) -> Result<Option<Vec<u8>>, FetchError> {
    let Some(head) = head(answer)? else {
        return Ok(None);
    };
    accept(&head)?;
    let body = answer.get(head.body_at..).unwrap_or_default();
    if head.chunked {
        return dechunk(body);
    }
    match head.content_length {
        Some(n) if body.len() >= n => Ok(Some(body.get(..n).unwrap_or_default().to_vec())),
        _ => Ok(None),
    }
}

/// An answer the server ended by closing: complete only without a length to check it against.
fn read_to_close(answer: &[u8]) -> Result<Vec<u8>, FetchError> {
    let head = head(answer)?.ok_or_else(|| FetchError::Malformed("no complete head".into()))?;
    accept(&head)?;
    if head.chunked || head.content_length.is_some() {
        return Err(FetchError::Malformed(
            "the connection closed inside the body".into(),
        ));
    }
    let body = answer.get(head.body_at..).unwrap_or_default();
    if body.len() > POLICY_BYTES_MAX {
        return Err(FetchError::TooLarge(POLICY_BYTES_MAX));
    }
    Ok(body.to_vec())
}

/// A chunked body (RFC 9112 7.1), when complete; extensions and trailers ignored.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, FetchError> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(rest.get(..line_end).unwrap_or_default())
            .map_err(|_| FetchError::Malformed("chunk size".into()))?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| FetchError::Malformed(format!("chunk size {size_text:?}")))?;
        if size == 0 {
            return Ok(Some(body));
        }
        if body.len().saturating_add(size) > POLICY_BYTES_MAX {
            return Err(FetchError::TooLarge(POLICY_BYTES_MAX));
        }
        let data_at = line_end + 2;
        let Some(data) = rest.get(data_at..data_at + size) else {
            return Ok(None);
        };
        body.extend_from_slice(data);
        let Some(after) = rest.get(data_at + size..) else {
            return Ok(None);
        };
        if after.len() < 2 {
            return Ok(None);
        }
        if !after.starts_with(b"\r\n") {
            return Err(FetchError::Malformed("chunk not followed by CRLF".into()));
        }
        rest = after.get(2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n";

    #[test]
    fn a_body_by_its_length_or_chunked() {
        let full = format!("{OK}Content-Length: 5\r\n\r\nhello");
        assert_eq!(complete_body(full.as_bytes()).unwrap().unwrap(), b"hello");
        let partial = format!("{OK}Content-Length: 5\r\n\r\nhel");
        assert_eq!(complete_body(partial.as_bytes()).unwrap(), None);
        assert_eq!(complete_body(b"HTTP/1.1 200 OK\r\nContent-").unwrap(), None);
        let chunked =
            format!("{OK}Transfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n");
        assert_eq!(
            complete_body(chunked.as_bytes()).unwrap().unwrap(),
            b"hello"
        );
        let cut = format!("{OK}Transfer-Encoding: chunked\r\n\r\n3\r\nhe");
        assert_eq!(complete_body(cut.as_bytes()).unwrap(), None);
        let closed = format!("{OK}\r\nhello");
        assert_eq!(complete_body(closed.as_bytes()).unwrap(), None);
        assert_eq!(read_to_close(closed.as_bytes()).unwrap(), b"hello");
        assert!(
            read_to_close(partial.as_bytes()).is_err(),
            "a cut body is refused"
        );
    }

    #[test]
    fn what_the_rfc_refuses() {
        let redirect = b"HTTP/1.1 301 Moved\r\nLocation: https://x/\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(complete_body(redirect), Err(FetchError::Status(301)));
        let html = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1\r\n\r\nx";
        assert!(matches!(
            complete_body(html),
            Err(FetchError::ContentType(_))
        ));
        let no_type = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx";
        assert!(matches!(
            complete_body(no_type),
            Err(FetchError::ContentType(_))
        ));
        let big = format!("{OK}Content-Length: {}\r\n\r\n", POLICY_BYTES_MAX + 1);
        assert_eq!(
            complete_body(big.as_bytes()),
            Err(FetchError::TooLarge(POLICY_BYTES_MAX))
        );
        let huge_head = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(HEAD_BYTES_MAX));
        assert_eq!(
            complete_body(huge_head.as_bytes()),
            Err(FetchError::TooLarge(HEAD_BYTES_MAX))
        );
        let big_chunk = format!(
            "{OK}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            POLICY_BYTES_MAX + 1
        );
        assert_eq!(
            complete_body(big_chunk.as_bytes()),
            Err(FetchError::TooLarge(POLICY_BYTES_MAX))
        );
        assert!(matches!(
            complete_body(b"NOT HTTP\r\n\r\n"),
            Err(FetchError::Malformed(_))
        ));
    }

    /// A one-shot HTTPS server on loopback answering `answer` with a certificate of a test CA
    /// for `mta-sts.a.test`; the client's configuration trusts that CA.
    fn server(answer: Option<&'static [u8]>) -> (u16, Arc<ClientConfig>) {
        use super::super::super::ClientTls;
        use super::super::super::test_pki::Ca;
        let ca = Ca::new("Fetch CA");
        let leaf = ca.issue(&["mta-sts.a.test"]);
        let server = leaf.server_config();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            let connection = rustls::ServerConnection::new(server).unwrap();
            let mut stream = StreamOwned::new(connection, socket);
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            match answer {
                Some(answer) => {
                    let _ = stream.write_all(answer);
                    stream.conn.send_close_notify();
                    let _ = stream.flush();
                }
                None => std::thread::sleep(Duration::from_secs(5)),
            }
        });
        let tls = ClientTls::with_anchors(&[ca.der()], Vec::new()).unwrap();
        (port, tls.verified.clone())
    }

    fn request(port: u16, tls: Arc<ClientConfig>, timeout: Duration) -> Request {
        let mut r = Request::new("a.test", vec!["127.0.0.1".parse().unwrap()], tls, timeout);
        r.port = port;
        r
    }

    #[test]
    fn fetches_over_https_from_the_given_address() {
        let (port, tls) = server(Some(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\nversion: STSv1",
        ));
        let body = fetch(&request(port, tls, Duration::from_secs(5))).unwrap();
        assert_eq!(body, b"version: STSv1");
    }

    #[test]
    fn a_silent_server_fails_within_the_timeout() {
        let (port, tls) = server(None);
        let started = Instant::now();
        let e = fetch(&request(port, tls, Duration::from_millis(300))).unwrap_err();
        assert_eq!(e, FetchError::Timeout("mta-sts.a.test".into()));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn an_untrusted_certificate_fails() {
        let (port, _) = server(Some(b"HTTP/1.1 200 OK\r\n\r\n"));
        let untrusted = super::super::super::ClientTls::new()
            .unwrap()
            .verified
            .clone();
        let e = fetch(&request(port, untrusted, Duration::from_secs(5))).unwrap_err();
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
        assert!(matches!(e, FetchError::Certificate { .. }), "{e:?}");
    }
}
