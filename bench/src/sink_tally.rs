//! Counts the recipients the sink has logged, reading only what was appended since the last look.
//!
//! A relay that splits a message by recipient domain delivers it as several transactions (one
//! line each in the sink's log), so `volley-bench relay` counts recipients, not lines.
//!
//! It runs beside the measured processes on the same CPUs, so it must cost little: the file stays
//! open, appended bytes are read into one reused buffer (a fresh buffer per look made the kernel
//! zero new huge pages, 12 % of the machine's samples in a 10-domain relay), and the key is found
//! with `memmem`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The sink log's recipients so far.
#[derive(Debug)]
pub struct SinkTally {
    path: PathBuf,
    /// Open once the sink has created the log.
    file: Option<File>,
    offset: u64,
    /// Bytes read and not yet counted: the start of a line not yet ended by its newline, then
    /// what the next look appends. Its capacity is kept between looks.
    unread: Vec<u8>,
    recipients: u64,
    lines: u64,
}

impl SinkTally {
    pub fn new(path: &Path) -> SinkTally {
        SinkTally {
            path: path.to_path_buf(),
            file: None,
            offset: 0,
            unread: Vec::new(),
            recipients: 0,
            lines: 0,
        }
    }

    /// Reads what was appended and returns the recipients logged so far (a missing file: none yet).
    pub fn recipients(&mut self) -> u64 {
        self.read_new();
        self.recipients
    }

    /// Transactions (lines) logged so far.
    pub fn lines(&mut self) -> u64 {
        self.read_new();
        self.lines
    }

    fn read_new(&mut self) {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        // Appends to what is left of the last look.
        let Ok(n) = file.read_to_end(&mut self.unread) else {
            return;
        };
        self.offset += n as u64;
        let Some(end) = memchr::memrchr(b'\n', &self.unread) else {
            return;
        };
        let finder = memchr::memmem::Finder::new(RECIPIENTS_KEY);
        for line in self.unread[..end].split(|&b| b == b'\n') {
            if !line.is_empty() {
                self.lines += 1;
                self.recipients += recipients_in(line, &finder);
            }
        }
        self.unread.drain(..=end);
    }
}

const RECIPIENTS_KEY: &[u8] = b"\"recipients\":[";

/// The length of the `"recipients":[...]` array of one log line (JSON strings, escapes skipped).
fn recipients_in(line: &[u8], key: &memchr::memmem::Finder<'_>) -> u64 {
    let Some(start) = key.find(line) else {
        return 0;
    };
    let mut count = 0;
    let mut in_string = false;
    let mut escaped = false;
    for &b in &line[start + RECIPIENTS_KEY.len()..] {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => {
                    in_string = true;
                    count += 1;
                }
                b']' => break,
                _ => {}
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn counts_recipients_of_whole_lines_only() {
        let dir = std::env::temp_dir().join(format!("sink-tally-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.jsonl");
        let mut tally = SinkTally::new(&path);
        assert_eq!(tally.recipients(), 0, "no file yet");
        let mut f = File::create(&path).unwrap();
        f.write_all(br#"{"time":"t","recipients":["a@d0.test","b\"],@d1.test"],"size_bytes":1}"#)
            .unwrap();
        f.write_all(b"\n{\"time\":\"t\",\"recipients\":[\"c@d")
            .unwrap();
        assert_eq!(tally.recipients(), 2, "the unfinished second line waits");
        f.write_all(b"2.test\"],\"x\":[\"y\"]}\n").unwrap();
        assert_eq!(tally.recipients(), 3);
        assert_eq!(tally.lines(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_list_counts_none() {
        let key = memchr::memmem::Finder::new(RECIPIENTS_KEY);
        assert_eq!(recipients_in(br#"{"recipients":[],"a":"b"}"#, &key), 0);
        assert_eq!(recipients_in(br#"{"sender":"x"}"#, &key), 0);
    }
}
