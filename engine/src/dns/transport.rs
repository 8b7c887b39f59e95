//! One DNS question to one nameserver: UDP from a fresh random port with a random ID, the answer
//! checked (source address, ID, question), TCP when the UDP answer is truncated.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpStream, UdpSocket};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

/// EDNS0 UDP payload we advertise (the DNS flag day 2020 value: no IP fragmentation).
pub const EDNS_UDP_PAYLOAD_BYTES: u16 = 1232;
/// Receive buffer; larger datagrams are cut and fail to parse, then ignored.
const UDP_RECEIVE_BYTES: usize = 4096;

/// Why an exchange with one server gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeError {
    Timeout,
    Io(String),
}

/// Sends `name`/`rtype` to `server` and waits up to `timeout` for a matching answer. Datagrams from
/// another address, with another ID or question, or that do not parse are ignored (anti-spoofing).
pub async fn exchange(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Message, ExchangeError> {
    let deadline = Instant::now() + timeout;
    let id = fastrand::u16(..);
    let mut query = Message::query();
    query.metadata.id = id;
    query.metadata.recursion_desired = true;
    // RFC 6840 5.7: asks a validating nameserver to say (AD) whether the answer is validated.
    query.metadata.authentic_data = true;
    query.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_UDP_PAYLOAD_BYTES);
    query.set_edns(edns);
    let bytes = query
        .to_vec()
        .map_err(|e| ExchangeError::Io(format!("cannot encode query: {e}")))?;

    // A fresh socket per query: the kernel picks a random ephemeral source port.
    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).map_err(io_error)?;
    socket.send_to(&bytes, server).await.map_err(io_error)?;
    let mut buf = vec![0u8; UDP_RECEIVE_BYTES];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ExchangeError::Timeout);
        }
        let received =
            glommio::timer::timeout(remaining, async { socket.recv_from(&mut buf).await }).await;
        let (n, from) = match received {
            Ok(r) => r,
            Err(glommio::GlommioError::TimedOut(_)) => return Err(ExchangeError::Timeout),
            Err(e) => return Err(ExchangeError::Io(e.to_string())),
        };
        if from != server {
            continue;
        }
        let Some(response) = buf.get(..n).and_then(|b| Message::from_vec(b).ok()) else {
            continue;
        };
        if !answers(&response, id, name, rtype) {
            continue;
        }
        if response.metadata.truncation {
            let remaining = deadline.saturating_duration_since(Instant::now());
            return exchange_tcp(server, &bytes, id, name, rtype, remaining).await;
        }
        return Ok(response);
    }
}

/// The same question over TCP (RFC 1035 4.2.2: a two-byte length before each message).
async fn exchange_tcp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Message, ExchangeError> {
    if timeout.is_zero() {
        return Err(ExchangeError::Timeout);
    }
    let len = u16::try_from(query.len()).map_err(|_| ExchangeError::Io("query too long".into()))?;
    let result = glommio::timer::timeout(timeout, async {
        let mut stream = TcpStream::connect(server).await?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        stream.flush().await?;
        let mut len_bytes = [0u8; 2];
        stream.read_exact(&mut len_bytes).await?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len_bytes))];
        stream.read_exact(&mut body).await?;
        Ok(body)
    })
    .await;
    let body = match result {
        Ok(body) => body,
        Err(glommio::GlommioError::TimedOut(_)) => return Err(ExchangeError::Timeout),
        Err(e) => return Err(ExchangeError::Io(e.to_string())),
    };
    let response = Message::from_vec(&body)
        .map_err(|e| ExchangeError::Io(format!("malformed TCP answer: {e}")))?;
    if !answers(&response, id, name, rtype) {
        return Err(ExchangeError::Io(
            "TCP answer does not match the question".into(),
        ));
    }
    Ok(response)
}

/// Whether `response` answers our question: a response to a QUERY (RFC 1035 4.1.1: the opcode is
/// copied), same ID, same single question.
pub(crate) fn answers(response: &Message, id: u16, name: &Name, rtype: RecordType) -> bool {
    response.metadata.id == id
        && response.metadata.message_type == MessageType::Response
        && response.metadata.op_code == OpCode::Query
        && matches!(response.queries.as_slice(), [q] if q.name == *name && q.query_type == rtype)
}

fn io_error(e: impl std::fmt::Display) -> ExchangeError {
    ExchangeError::Io(e.to_string())
}
