//! Numbers written as ASCII straight into a buffer. Replies, SMTP commands, queue ids and
//! accounting lines write a few numbers per message each; going through `format!` cost an
//! allocation and the formatter's padding machinery for every one of them.

/// Appends `n` in decimal, without padding.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `n` in upper-case hexadecimal, zero-padded to at least `width` digits (at most 16).
pub fn push_hex_upper(out: &mut Vec<u8>, n: u64, width: usize) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut digits = [b'0'; 16];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = DIGITS[(rest & 0xf) as usize];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    let start = at.min(digits.len().saturating_sub(width));
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decimal(n: u64) -> String {
        let mut out = Vec::new();
        push_decimal(&mut out, n);
        String::from_utf8(out).unwrap()
    }

    fn hex(n: u64, width: usize) -> String {
        let mut out = Vec::new();
        push_hex_upper(&mut out, n, width);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn decimal_agrees_with_the_formatter() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(decimal(n), n.to_string());
        }
    }

    #[test]
    fn hex_agrees_with_the_formatter_at_every_width() {
        for n in [
            0,
            1,
            0xf,
            0x10,
            0xabc,
            0x1234_5678_9abc,
            0x1_0000_0000_0000,
            u64::MAX,
        ] {
            for width in 0..=16 {
                assert_eq!(
                    hex(n, width),
                    format!("{n:0width$X}"),
                    "{n:x} at width {width}"
                );
            }
        }
    }
}
