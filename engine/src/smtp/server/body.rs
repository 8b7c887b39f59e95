//! The message body: DATA (RFC 5321 section 4.1.1.4) and BDAT chunks (RFC 3030), read under
//! the body deadline, checked by `smtp::data`, and handed to the driver or refused. A body the
//! driver has no memory for (`body_budget_exhausted`) is freed at once, still read to its end, and
//! refused there with 452 4.3.1.

use crate::envelope::BodyType;
use crate::smtp::data::{ChunkedBody, DataDecoder, DataError};
use crate::smtp::reply::Reply;

/// 452 4.3.1 for a message whose body found no room in `[server] max_message_bytes_in_flight`
/// (at the end of its data, or at MAIL when its SIZE does not fit): try again later.
pub fn message_bytes_in_flight_refusal() -> Reply {
    Reply::INSUFFICIENT_STORAGE
        .with_text("Insufficient system storage: too many messages in flight, try again later")
}

use super::{Event, InputPhase, MailTransaction, Session, Waiting};

/// A BDAT chunk being read: raw octets, consumed even when refused (RFC 3030 section 3).
#[derive(Debug)]
pub(super) struct Chunk {
    chunk_bytes: u64,
    remaining: u64,
    last: bool,
    refusal: Option<Reply>,
}

impl Session {
    /// Memory held by this session's message bodies, in octets: the body being received (its
    /// allocation, which runs ahead of the octets received) and a complete one in an
    /// `Event::Message` not yet taken by `poll_event`.
    pub fn body_bytes_held(&self) -> usize {
        let receiving = match &self.phase {
            InputPhase::Data(decoder) => decoder.held_bytes(),
            _ => 0,
        };
        let chunks = self
            .transaction
            .as_ref()
            .and_then(|tx| tx.chunks.as_ref())
            .map_or(0, ChunkedBody::held_bytes);
        let handed_over: usize = self
            .events
            .iter()
            .map(|event| match event {
                Event::Message { body, .. } => body.capacity(),
                _ => 0,
            })
            .sum();
        receiving + chunks + handed_over
    }

    /// The driver has no room for this session's body in the message bytes in flight: the body
    /// kept so far is freed, the rest is read and dropped, and the message gets 452 4.3.1 at the
    /// end of its data (DATA) or of the current chunk (BDAT; later chunks get 503, as after any
    /// refused chunk). A body over `max_message_bytes` or breaking a text rule still gets that
    /// permanent reply instead. Returns false, doing nothing, when no body is being received.
    pub fn body_budget_exhausted(&mut self) -> bool {
        let Some(tx) = &mut self.transaction else {
            return false;
        };
        match (&mut self.phase, &mut tx.chunks) {
            (InputPhase::Data(decoder), _) => decoder.discard_body(),
            (_, Some(body)) => body.discard(),
            (_, None) => return false,
        }
        tx.body_budget_refused = true;
        true
    }

    pub(super) fn read_data(&mut self, rest: &[u8]) -> usize {
        let InputPhase::Data(decoder) = &mut self.phase else {
            return 0;
        };
        let (used, done) = decoder.feed(rest);
        if done
            && let InputPhase::Data(decoder) =
                std::mem::replace(&mut self.phase, InputPhase::Command)
        {
            self.restart_command_stage(self.now);
            let transaction = self.transaction.take();
            let budget_refused = transaction
                .as_ref()
                .is_some_and(|tx| tx.body_budget_refused);
            let too_big = decoder.received_bytes() > self.config.max_message_bytes as u64;
            let verdict = match decoder.finish() {
                // The overflow is the discarded body's, not a size the client exceeded.
                Err(DataError::TooBig) if budget_refused && !too_big => {
                    Err(message_bytes_in_flight_refusal())
                }
                verdict => verdict.map_err(DataError::reply),
            };
            self.finish_message(transaction, verdict);
        }
        used
    }

    pub(super) fn read_chunk(&mut self, rest: &[u8]) -> usize {
        let InputPhase::Bdat(chunk) = &mut self.phase else {
            return 0;
        };
        let n = usize::try_from(chunk.remaining)
            .unwrap_or(usize::MAX)
            .min(rest.len());
        let bytes = rest.get(..n).unwrap_or_default();
        if chunk.refusal.is_none()
            && let Some(body) = self.transaction.as_mut().and_then(|t| t.chunks.as_mut())
        {
            body.push(bytes);
        }
        chunk.remaining -= n as u64;
        if chunk.remaining == 0
            && let InputPhase::Bdat(chunk) = std::mem::replace(&mut self.phase, InputPhase::Command)
        {
            self.restart_command_stage(self.now);
            self.finish_chunk(chunk);
        }
        n
    }

    pub(super) fn data(&mut self) {
        let refusal = match &self.transaction {
            None => Some(Reply::MAIL_FIRST),
            Some(tx) if tx.chunks.is_some() || tx.envelope.body_type == BodyType::BinaryMime => {
                Some(Reply::DATA_AFTER_BDAT)
            }
            Some(tx) if tx.envelope.recipients.is_empty() => Some(Reply::NO_VALID_RECIPIENTS),
            Some(_) => None,
        };
        if let Some(reply) = refusal {
            return self.reply_error(reply);
        }
        self.reply(Reply::START_MAIL_INPUT);
        let body_deadline = self.now + self.config.data_timeout;
        if let Some(tx) = &mut self.transaction {
            tx.body_deadline = Some(body_deadline);
        }
        let mut decoder = DataDecoder::new(self.config.max_message_bytes, self.config.line_endings);
        if let Some(size) = self.transaction.as_ref().and_then(|tx| tx.declared_size) {
            decoder.expect(size);
        }
        self.phase = InputPhase::Data(decoder);
    }

    pub(super) fn bdat(&mut self, chunk_bytes: u64, last: bool) {
        let max_message_bytes = self.config.max_message_bytes;
        let endings = self.config.line_endings;
        let body_deadline = self.now + self.config.data_timeout;
        let refusal = match &mut self.transaction {
            None => Some(Reply::MAIL_FIRST),
            Some(tx) if tx.envelope.recipients.is_empty() => Some(Reply::NO_VALID_RECIPIENTS),
            Some(tx) => {
                let binary = tx.envelope.body_type == BodyType::BinaryMime;
                tx.body_deadline.get_or_insert(body_deadline);
                tx.chunks
                    .get_or_insert_with(|| ChunkedBody::new(max_message_bytes, binary, endings))
                    .announce(chunk_bytes);
                None
            }
        };
        let chunk = Chunk {
            chunk_bytes,
            remaining: chunk_bytes,
            last,
            refusal,
        };
        if chunk_bytes == 0 {
            self.finish_chunk(chunk);
        } else {
            self.phase = InputPhase::Bdat(chunk);
        }
    }

    pub(super) fn finish_chunk(&mut self, chunk: Chunk) {
        if let Some(refusal) = chunk.refusal {
            return self.reply_error(refusal);
        }
        if self
            .transaction
            .as_ref()
            .is_some_and(|tx| tx.body_budget_refused)
        {
            // As a body over the size cap: the transaction fails at this chunk.
            self.transaction = None;
            return self.refuse_message(message_bytes_in_flight_refusal());
        }
        let broken = self
            .transaction
            .as_ref()
            .and_then(|tx| tx.chunks.as_ref())
            .map_or(Some(DataError::TooBig), ChunkedBody::broken);
        if let Some(error) = broken {
            // The transaction fails at once, as DATA would at its end; chunks still in flight
            // get 503 (RFC 3030 section 4.2).
            self.transaction = None;
            return self.refuse_message(error.reply());
        }
        if !chunk.last {
            let text = format!("{} octets received", chunk.chunk_bytes);
            return self.reply(Reply::OK.with_text(text));
        }
        let mut transaction = self.transaction.take();
        let body = transaction
            .as_mut()
            .and_then(|tx| tx.chunks.take())
            .ok_or(DataError::TooBig)
            .and_then(ChunkedBody::finish)
            .map_err(DataError::reply);
        self.finish_message(transaction, body);
    }

    /// The end of a DATA body or of the LAST chunk: hand the message over or refuse it.
    pub(super) fn finish_message(
        &mut self,
        transaction: Option<MailTransaction>,
        body: Result<Vec<u8>, Reply>,
    ) {
        match (transaction, body) {
            (Some(tx), Ok(body)) => {
                self.events.push_back(Event::Message {
                    envelope: tx.envelope,
                    body,
                });
                self.waiting = Some(Waiting::Message);
            }
            (Some(_), Err(reply)) => self.refuse_message(reply),
            (None, Err(reply)) => self.reply_error(reply),
            (None, Ok(_)) => self.reply_error(Reply::MAIL_FIRST),
        }
    }
}
