//! The sink's message log: one JSON line per accepted message, buffered per core.
//!
//! Every core opens the file with O_APPEND and writes only whole lines, one `write(2)` per batch,
//! so lines from different cores never interleave. A batch is written when it reaches
//! [`FLUSH_AT_BYTES`] or when the core's ticker calls [`MessageLog::flush`] (every 100 ms and on
//! exit).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;

use crate::clock;

/// A batch is written once it holds this much.
pub const FLUSH_AT_BYTES: usize = 256 * 1024;

/// One accepted message as logged (the line also starts with `time`, RFC 3339 UTC with ms).
#[derive(Debug, Serialize)]
pub struct LoggedMessage<'a> {
    /// The client's IP address.
    pub peer_ip: IpAddr,
    /// The EHLO/HELO name.
    pub ehlo: &'a str,
    /// The reverse path (empty for the null sender).
    pub sender: &'a str,
    /// Accepted recipients.
    pub recipients: &'a [String],
    /// Message size after removing dot-stuffing.
    pub size_bytes: u64,
    /// The Message-ID header value, if any.
    pub message_id: Option<&'a str>,
    /// Unique per process.
    pub connection_id: u64,
    /// Received over TLS (after STARTTLS, with `--tls-cert`).
    pub tls: bool,
    /// Its MAIL carried REQUIRETLS (RFC 8689).
    pub requiretls: bool,
}

/// A core's buffered writer to the shared log file.
#[derive(Debug)]
pub struct MessageLog {
    file: File,
    batch: Vec<u8>,
    scratch: Vec<u8>,
}

impl MessageLog {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> io::Result<MessageLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(MessageLog {
            file,
            batch: Vec::with_capacity(FLUSH_AT_BYTES + 4096),
            scratch: Vec::with_capacity(1024),
        })
    }

    /// Adds one line; writes the batch when it is big enough.
    pub fn append(&mut self, message: &LoggedMessage<'_>) -> io::Result<()> {
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, message).map_err(io::Error::other)?;
        self.batch.extend_from_slice(b"{\"time\":\"");
        clock::write_rfc3339_millis(&mut self.batch, clock::unix_millis_now());
        self.batch.extend_from_slice(b"\",");
        // The serialized object without its opening brace continues the line.
        self.batch
            .extend_from_slice(self.scratch.get(1..).unwrap_or_default());
        self.batch.push(b'\n');
        if self.batch.len() >= FLUSH_AT_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes every buffered line (one write of whole lines).
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.batch.is_empty() {
            // O_APPEND regular-file writes of this size complete in one call on Linux.
            self.file.write_all(&self.batch)?;
            self.batch.clear();
        }
        Ok(())
    }
}

impl Drop for MessageLog {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
