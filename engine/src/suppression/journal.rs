//! The suppression list on disk: `spool_dir/suppressions.log`, one change a line
//! (`+customer<TAB>address` or `-customer<TAB>address`), appended and fsynced before the API
//! answers. Read back at start; rewritten with only what is suppressed when removals made up a
//! large part of it.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::key;

pub const JOURNAL_FILE: &str = "suppressions.log";
/// A line longer than this is not ours (an address is at most 254 octets, a customer name short).
const MAX_LINE_BYTES: usize = 1_024;

pub struct Journal {
    path: PathBuf,
    file: File,
}

/// What the journal holds once replayed.
pub struct Loaded {
    pub journal: Journal,
    pub keys: Vec<u128>,
    /// Lines that were not changes (damaged tail after a crash, foreign lines): skipped.
    pub skipped_lines: u64,
}

fn parse(line: &str) -> Option<(bool, &str, &str)> {
    let (op, rest) = line.split_at_checked(1)?;
    let added = match op {
        "+" => true,
        "-" => false,
        _ => return None,
    };
    let (customer, address) = rest.split_once('\t')?;
    (!customer.is_empty() && !address.is_empty()).then_some((added, customer, address))
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Journal {
    /// Replays the journal of `dir` (absent: empty). Blocking: run it off the reactor.
    pub fn load(dir: &Path) -> std::io::Result<Loaded> {
        let path = dir.join(JOURNAL_FILE);
        let mut changes: Vec<(u128, bool)> = Vec::new();
        let mut skipped_lines = 0;
        let mut removals = 0usize;
        match File::open(&path) {
            Ok(file) => {
                let mut reader = BufReader::new(file);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) => break,
                        Ok(_) => {}
                        // Not UTF-8: a damaged line; skip it.
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                            skipped_lines += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    let text = line.trim_end_matches('\n');
                    match parse(text).filter(|_| text.len() <= MAX_LINE_BYTES) {
                        Some((added, customer, address)) => {
                            removals += usize::from(!added);
                            changes.push((key(customer, address), added));
                        }
                        None => skipped_lines += 1,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let lines = changes.len();
        // The last change of each key wins: a stable sort keeps the file's order among equals.
        changes.sort_by_key(|c| c.0);
        let mut keys = Vec::with_capacity(changes.len() - removals.min(changes.len()));
        for (i, (k, added)) in changes.iter().enumerate() {
            let last = changes.get(i + 1).is_none_or(|next| next.0 != *k);
            if last && *added {
                keys.push(*k);
            }
        }
        drop(changes);
        // A third of the lines removals: most of the file is history, rewrite it.
        if removals > 0 && removals * 3 >= lines {
            compact(&path, &keys)?;
        }
        let file = open_append(&path)?;
        Ok(Loaded {
            journal: Journal { path, file },
            keys,
            skipped_lines,
        })
    }

    /// Appends changes and fsyncs them: durable when this returns. Blocking.
    pub fn append(
        &mut self,
        added: bool,
        customer: &str,
        addresses: &[String],
    ) -> std::io::Result<()> {
        let op = if added { '+' } else { '-' };
        let mut text = String::with_capacity(addresses.len() * 32);
        for a in addresses {
            text.push(op);
            text.push_str(customer);
            text.push('\t');
            text.push_str(a);
            text.push('\n');
        }
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Rewrites the journal with one `+` line per suppressed key (temporary file, fsync, rename).
fn compact(path: &Path, keys: &[u128]) -> std::io::Result<()> {
    let live: HashSet<u128> = keys.iter().copied().collect();
    let mut written: HashSet<u128> = HashSet::with_capacity(live.len());
    let tmp = path.with_extension("log.tmp");
    {
        let reader = BufReader::new(File::open(path)?);
        let mut out = BufWriter::new(File::create(&tmp)?);
        for line in reader.lines() {
            let Ok(line) = line else { continue };
            if let Some((true, customer, address)) = parse(&line) {
                let k = key(customer, address);
                if live.contains(&k) && written.insert(k) {
                    out.write_all(line.as_bytes())?;
                    out.write_all(b"\n")?;
                }
            }
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    log::info!(
        "suppression journal {} compacted to {} entries",
        path.display(),
        written.len()
    );
    Ok(())
}
