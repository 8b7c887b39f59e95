//! A stream that first gives back octets already read from it: what came after a PROXY header
//! in the same reads (a pipelining client's first command, or a TLS ClientHello on an implicit
//! TLS listener) reaches the SMTP session or the TLS handshake as if never taken out.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

pub struct Prefixed<S> {
    /// Octets to give back before reading `inner`; freed once given.
    prefix: Vec<u8>,
    given: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            given: 0,
            inner,
        }
    }

    /// Octets still to be given back.
    pub fn pending(&self) -> &[u8] {
        &self.prefix[self.given..]
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let pending = this.pending();
        if pending.is_empty() || buf.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = pending.len().min(buf.len());
        buf[..n].copy_from_slice(&pending[..n]);
        this.given += n;
        if this.given == this.prefix.len() {
            this.prefix = Vec::new();
            this.given = 0;
        }
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_lite::io::Cursor;
    use futures_lite::{AsyncReadExt, AsyncWriteExt, future};

    use super::*;

    #[test]
    fn gives_the_prefix_then_the_stream() {
        let mut s = Prefixed::new(b"EHLO a\r\n".to_vec(), Cursor::new(b"QUIT\r\n".to_vec()));
        let mut small = [0u8; 5];
        let n = future::block_on(s.read(&mut small)).unwrap();
        assert_eq!(&small[..n], b"EHLO ");
        let mut rest = Vec::new();
        future::block_on(s.read_to_end(&mut rest)).unwrap();
        assert_eq!(rest, b"a\r\nQUIT\r\n");
        assert!(s.pending().is_empty());
    }

    #[test]
    fn an_empty_prefix_reads_the_stream() {
        let mut s = Prefixed::new(Vec::new(), Cursor::new(b"x".to_vec()));
        let mut all = Vec::new();
        future::block_on(s.read_to_end(&mut all)).unwrap();
        assert_eq!(all, b"x");
    }

    #[test]
    fn writes_go_to_the_stream() {
        let mut s = Prefixed::new(b"unread".to_vec(), Cursor::new(Vec::new()));
        future::block_on(s.write_all(b"220 hi\r\n")).unwrap();
        assert_eq!(s.inner.get_ref(), b"220 hi\r\n");
        assert_eq!(s.pending(), b"unread");
    }
}
