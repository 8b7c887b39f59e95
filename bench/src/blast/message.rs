//! What `blast` sends: envelopes and RFC 5322 messages of a chosen size, built into reused buffers.

use std::io::Write;

use memchr::memmem;

/// Longest body line, in characters (RFC 5322 recommends at most 78).
pub const MAX_LINE_CHARS: usize = 78;

const DOT_LINE: &[u8] = b".volley-bench: this line starts with a dot, so it travels dot-stuffed";
const FILLER_LINE: &[u8] =
    b"volley-bench filler 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// Most entries in a `--size-dist`.
pub const MAX_SIZE_CLASSES: usize = 64;

/// How big each message is: one size, or sizes drawn per message from weighted classes.
#[derive(Debug, Clone, PartialEq)]
pub enum SizePlan {
    /// Every message this many bytes.
    Fixed(usize),
    /// Each message's size drawn from `(size_bytes, weight)` classes with an RNG seeded by
    /// `seed` and the message index, so a run is reproducible however connections split it.
    Weighted {
        /// `(size_bytes, weight)`, weights > 0.
        classes: Vec<(usize, u32)>,
        /// Sum of the weights.
        total_weight: u64,
        /// The run's seed.
        seed: u64,
    },
}

impl SizePlan {
    /// Parses `--size-dist`: `size:weight` pairs separated by commas (`1024:70,10240:25`).
    pub fn parse_distribution(text: &str, seed: u64) -> Result<SizePlan, String> {
        let mut classes = Vec::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (size, weight) = pair
                .split_once(':')
                .ok_or_else(|| format!("expected SIZE:WEIGHT, got {pair:?}"))?;
            let size: usize = size
                .trim()
                .parse()
                .map_err(|_| format!("bad size in {pair:?}"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("bad weight in {pair:?}"))?;
            if weight == 0 {
                return Err(format!("weight must be positive in {pair:?}"));
            }
            classes.push((size, weight));
        }
        if classes.is_empty() {
            return Err("empty size distribution".into());
        }
        if classes.len() > MAX_SIZE_CLASSES {
            return Err(format!("at most {MAX_SIZE_CLASSES} size classes"));
        }
        let total_weight = classes.iter().map(|(_, w)| u64::from(*w)).sum();
        Ok(SizePlan::Weighted {
            classes,
            total_weight,
            seed,
        })
    }

    /// The size of message `index`.
    pub fn size_of(&self, index: u64) -> usize {
        match self {
            SizePlan::Fixed(size) => *size,
            SizePlan::Weighted {
                classes,
                total_weight,
                seed,
            } => {
                // One short-lived RNG per message: independent of the order messages are built in.
                let mut rng =
                    fastrand::Rng::with_seed(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let mut roll = rng.u64(..*total_weight);
                for (size, weight) in classes {
                    if roll < u64::from(*weight) {
                        return *size;
                    }
                    roll -= u64::from(*weight);
                }
                classes.last().map_or(0, |(size, _)| *size)
            }
        }
    }

    /// The largest size a message can have.
    pub fn max_size(&self) -> usize {
        match self {
            SizePlan::Fixed(size) => *size,
            SizePlan::Weighted { classes, .. } => {
                classes.iter().map(|(s, _)| *s).max().unwrap_or(0)
            }
        }
    }
}

/// Everything that shapes the messages of one run.
#[derive(Debug, Clone)]
pub struct MessagePlan {
    /// Wanted message sizes; a message is exactly its size unless its headers alone are longer.
    pub sizes: SizePlan,
    /// Recipients per message.
    pub recipients_per_message: u32,
    /// Recipient domains `d0.test` .. `d{domains-1}.test` (unless `domain_names` is given).
    pub domains: u32,
    /// Recipient domains by name, used in turn instead of `d<n>.test` when not empty.
    pub domain_names: Vec<String>,
    /// The reverse path and From: address.
    pub from: String,
    /// Distinguishes this run's Message-IDs from other runs'.
    pub run_id: String,
    /// The Date: header value.
    pub date: String,
    /// Extra headers as (name, value), added after the standard ones.
    pub extra_headers: Vec<(String, String)>,
    /// MAIL carries `SIZE=` (RFC 1870) with the message's size, as Postfix's, PowerMTA's and
    /// KumoMTA's clients do when the server offers SIZE.
    pub declare_size: bool,
}

impl MessagePlan {
    /// Appends recipient `r` (0-based) of message `index`: `user<g>@d<g % domains>.test` with
    /// `g = index * recipients_per_message + r`.
    pub fn write_recipient(&self, index: u64, r: u32, out: &mut Vec<u8>) {
        let g = index * u64::from(self.recipients_per_message) + u64::from(r);
        if self.domain_names.is_empty() {
            let _ = write!(out, "user{g}@d{}.test", g % u64::from(self.domains.max(1)));
        } else {
            let n = self.domain_names.len() as u64;
            let name = usize::try_from(g % n)
                .ok()
                .and_then(|i| self.domain_names.get(i))
                .map_or("d0.test", String::as_str);
            let _ = write!(out, "user{g}@{name}");
        }
    }

    /// The recipient as a string.
    #[cfg(test)]
    pub fn recipient(&self, index: u64, r: u32) -> String {
        let mut out = Vec::new();
        self.write_recipient(index, r, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends `MAIL FROM`, every `RCPT TO` and `DATA`: one pipelined group (RFC 2920).
    pub fn write_envelope(&self, index: u64, out: &mut Vec<u8>) {
        self.write_envelope_without_data(index, out);
        out.extend_from_slice(b"DATA\r\n");
    }

    /// Appends `MAIL FROM` and every `RCPT TO`.
    pub fn write_envelope_without_data(&self, index: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"MAIL FROM:<");
        out.extend_from_slice(self.from.as_bytes());
        out.push(b'>');
        if self.declare_size {
            let _ = write!(out, " SIZE={}", self.sizes.size_of(index));
        }
        out.extend_from_slice(b"\r\n");
        for r in 0..self.recipients_per_message {
            out.extend_from_slice(b"RCPT TO:<");
            self.write_recipient(index, r, out);
            out.extend_from_slice(b">\r\n");
        }
    }

    /// Appends message `index` as it is (not yet dot-stuffed).
    pub fn write_message(&self, index: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(b"From: <");
        out.extend_from_slice(self.from.as_bytes());
        out.extend_from_slice(b">\r\nTo: <");
        self.write_recipient(index, 0, out);
        let _ = write!(
            out,
            ">\r\nSubject: volley-bench message {index}\r\nDate: {}\r\nMessage-ID: <blast-{}-{index}@volley-bench>\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n",
            self.date, self.run_id
        );
        for (name, value) in &self.extra_headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let mut remaining = self.sizes.size_of(index).saturating_sub(out.len() - start);
        let mut first = true;
        while remaining >= 2 {
            // A line takes its characters plus CRLF; never leave a lone byte behind.
            let full = MAX_LINE_CHARS + 2;
            let take = if remaining >= full + 2 || remaining == full {
                full
            } else if remaining == full + 1 {
                full - 1
            } else {
                remaining
            };
            let text = if first { DOT_LINE } else { FILLER_LINE };
            let chars = take - 2;
            let body = text.get(..chars.min(text.len())).unwrap_or(text);
            out.extend_from_slice(body);
            // Lines longer than the template are padded (only FILLER_LINE is shorter than 78).
            out.extend(std::iter::repeat_n(b'x', chars - body.len()));
            out.extend_from_slice(b"\r\n");
            remaining -= take;
            first = false;
        }
    }
}

/// Appends `message` dot-stuffed (RFC 5321 §4.5.2), then the terminating `.\r\n`.
/// `message` must end with CRLF (or be empty).
pub fn write_dot_stuffed(message: &[u8], finder: &memmem::Finder<'_>, out: &mut Vec<u8>) {
    if message.first() == Some(&b'.') {
        out.push(b'.');
    }
    let mut pos = 0;
    while let Some(i) = finder.find(message.get(pos..).unwrap_or_default()) {
        let line_start = pos + i + 1;
        out.extend_from_slice(message.get(pos..line_start).unwrap_or_default());
        out.push(b'.');
        pos = line_start;
    }
    out.extend_from_slice(message.get(pos..).unwrap_or_default());
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(size: usize) -> MessagePlan {
        MessagePlan {
            sizes: SizePlan::Fixed(size),
            recipients_per_message: 2,
            domains: 3,
            domain_names: Vec::new(),
            from: "blast@volley-bench.test".into(),
            run_id: "r1".into(),
            date: "Thu, 01 Jan 1970 00:00:00 +0000".into(),
            extra_headers: vec![("X-Test".into(), "yes".into())],
            declare_size: false,
        }
    }

    #[test]
    fn messages_have_the_exact_size_and_short_lines() {
        for size in (400..3000).chain([1024, 10 * 1024, 100 * 1024]) {
            let mut out = Vec::new();
            plan(size).write_message(123_456, &mut out);
            assert_eq!(out.len(), size, "size {size}");
            assert!(out.ends_with(b"\r\n"));
            for line in out.split(|&b| b == b'\n') {
                assert!(line.len() <= MAX_LINE_CHARS + 1, "long line at size {size}");
            }
        }
    }

    #[test]
    fn headers_and_recipients() {
        let p = plan(1024);
        let mut out = Vec::new();
        p.write_message(7, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Message-ID: <blast-r1-7@volley-bench>\r\n"));
        assert!(text.contains("To: <user14@d2.test>\r\n"));
        assert!(text.contains("X-Test: yes\r\n"));
        assert!(text.contains("\r\n\r\n.volley-bench"));
        assert_eq!(p.recipient(7, 1), "user15@d0.test");
        let mut env = Vec::new();
        p.write_envelope(7, &mut env);
        assert_eq!(
            env,
            b"MAIL FROM:<blast@volley-bench.test>\r\nRCPT TO:<user14@d2.test>\r\nRCPT TO:<user15@d0.test>\r\nDATA\r\n"
        );
        let sized = MessagePlan {
            declare_size: true,
            ..p
        };
        let mut env = Vec::new();
        sized.write_envelope(7, &mut env);
        assert!(env.starts_with(b"MAIL FROM:<blast@volley-bench.test> SIZE=1024\r\n"));
    }

    #[test]
    fn size_distribution_is_weighted_and_reproducible() {
        let sizes = SizePlan::parse_distribution("1024:70, 10240:25,102400:5", 7).unwrap();
        assert_eq!(sizes.max_size(), 102_400);
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..20_000 {
            *counts.entry(sizes.size_of(i)).or_insert(0u32) += 1;
            assert_eq!(sizes.size_of(i), sizes.size_of(i));
        }
        let share = |s| f64::from(counts[&s]) / 20_000.0;
        assert!((share(1024) - 0.70).abs() < 0.02, "{counts:?}");
        assert!((share(10240) - 0.25).abs() < 0.02, "{counts:?}");
        assert!((share(102_400) - 0.05).abs() < 0.01, "{counts:?}");
        let mut p = plan(0);
        p.sizes = sizes;
        let mut out = Vec::new();
        p.write_message(3, &mut out);
        assert_eq!(out.len(), p.sizes.size_of(3));
        for bad in ["", "1024", "1024:0", "x:1", "1:y"] {
            assert!(SizePlan::parse_distribution(bad, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn named_domains_are_used_in_turn() {
        let mut p = plan(1024);
        p.domain_names = vec!["gmail.test".into(), "yahoo.test".into()];
        assert_eq!(p.recipient(0, 0), "user0@gmail.test");
        assert_eq!(p.recipient(0, 1), "user1@yahoo.test");
    }

    #[test]
    fn dot_stuffing() {
        let finder = memmem::Finder::new(b"\n.");
        let mut out = Vec::new();
        write_dot_stuffed(b".a\r\nb\r\n..c\r\n.\r\n", &finder, &mut out);
        assert_eq!(out, b"..a\r\nb\r\n...c\r\n..\r\n.\r\n");
        out.clear();
        write_dot_stuffed(b"", &finder, &mut out);
        assert_eq!(out, b".\r\n");
    }
}
