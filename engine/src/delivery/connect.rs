//! The outbound socket helper: a TCP connection from a chosen source address (a VMTA's IP).
//! glommio has no bind-before-connect, so the socket is built with socket2 and handed over by fd.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Starts a non-blocking connect from `source` (port chosen at connect time) to `dest`. The
/// returned stream may still be in SYN_SENT: await `wait_connected` before using it.
pub fn connect_from(source: IpAddr, dest: SocketAddr) -> io::Result<glommio::net::TcpStream> {
    if source.is_ipv4() != dest.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("source {source} and destination {dest} are of different families"),
        ));
    }
    let socket = Socket::new(Domain::for_address(dest), Type::STREAM, Some(Protocol::TCP))?;
    // Defer the port choice to connect(): the 4-tuple, not the source IP alone, must be unique,
    // which avoids ephemeral port exhaustion per source address.
    let one: libc::c_int = 1;
    // SAFETY: a valid fd owned by `socket`, a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        // Only an optimisation: without it bind() picks the port, which still works.
        log::debug!("IP_BIND_ADDRESS_NO_PORT: {}", io::Error::last_os_error());
    }
    socket.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&SockAddr::from(dest)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    // glommio does its own non-blocking IO (MSG_DONTWAIT and io_uring polls).
    socket.set_nonblocking(false)?;
    // SAFETY: `into_raw_fd` gives up ownership of a valid, connected-or-connecting TCP socket fd;
    // the glommio stream becomes its only owner. (glommio's From impl is for socket2 0.4.)
    Ok(unsafe { glommio::net::TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

/// Waits until the connect started by `connect_from` completes: a 0-byte write returns EAGAIN
/// while in SYN_SENT, so glommio arms an io_uring POLLOUT and retries.
pub async fn wait_connected(stream: &mut glommio::net::TcpStream) -> io::Result<()> {
    use futures_lite::AsyncWriteExt;
    stream.write(&[]).await.map(|_| ())
}

/// `wait_connected` bounded by `timeout` (`io::ErrorKind::TimedOut` on expiry).
pub async fn wait_connected_timeout(
    stream: &mut glommio::net::TcpStream,
    timeout: Duration,
) -> io::Result<()> {
    glommio::timer::timeout(timeout, async {
        wait_connected(stream).await.map_err(Into::into)
    })
    .await
    .map_err(|e| match e {
        glommio::GlommioError::TimedOut(_) => {
            io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
        }
        other => other.into(),
    })
}

/// `connect_from` then `wait_connected_timeout`.
pub async fn connect_from_timeout(
    source: IpAddr,
    dest: SocketAddr,
    timeout: Duration,
) -> io::Result<glommio::net::TcpStream> {
    let mut stream = connect_from(source, dest)?;
    wait_connected_timeout(&mut stream, timeout).await?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutor;

    #[test]
    fn connects_from_each_source_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dest = listener.local_addr().unwrap();
        let accepted = std::thread::spawn(move || {
            (0..2)
                .map(|_| listener.accept().unwrap().1.ip())
                .collect::<Vec<IpAddr>>()
        });
        let locals = LocalExecutor::default().run(async move {
            let mut locals = Vec::new();
            for src in ["127.0.0.2", "127.0.0.3"] {
                let stream =
                    connect_from_timeout(src.parse().unwrap(), dest, Duration::from_secs(5))
                        .await
                        .unwrap();
                locals.push(stream.local_addr().unwrap().ip());
            }
            locals
        });
        let expected: Vec<IpAddr> =
            vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
        assert_eq!(locals, expected);
        assert_eq!(accepted.join().unwrap(), expected);
    }

    #[test]
    fn refused_and_mismatched_families() {
        // A port with no listener: bind then drop to find one.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = LocalExecutor::default().run(async move {
            connect_from_timeout("127.0.0.2".parse().unwrap(), port, Duration::from_secs(5))
                .await
                .err()
        });
        assert_eq!(
            err.map(|e| e.kind()),
            Some(io::ErrorKind::ConnectionRefused)
        );
        let err = connect_from("::1".parse().unwrap(), port).err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
    }
}
