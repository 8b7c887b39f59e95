//! The outbound reply parser (`smtp::client::ReplyParser`): the replies of a remote server, split
//! anywhere. Whole and split parses agree; every reply has a code in 200..=599, at most
//! `MAX_REPLY_LINES` lines, an enhanced code of its own class; a reply written back as the server
//! would send it parses to the same reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volley::smtp::client::{MAX_REPLY_LINES, Reply, ReplyError, ReplyParser};

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let whole = parse_all(input, |_| input.len());
    let mut rng = u32::from(seed) | 1;
    let split = parse_all(input, |left| {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        (rng as usize % 24 + 1).min(left)
    });
    assert_eq!(whole, split);
    let (replies, _) = whole;
    for reply in &replies {
        assert!((200..=599).contains(&reply.code));
        assert!(reply.lines().count() <= MAX_REPLY_LINES);
        if let Some(enhanced) = reply.enhanced {
            assert_eq!(u16::from(enhanced.class), reply.code / 100);
        }
        let classes = [
            reply.is_positive(),
            reply.is_intermediate(),
            reply.is_transient(),
            reply.is_permanent(),
        ];
        assert_eq!(classes.iter().filter(|&&c| c).count(), 1);
        // Written back as the server sends it, it is the same reply (when its lines still fit:
        // invalid UTF-8 becomes U+FFFD, three octets for one).
        let resent = format!("{reply}\r\n");
        let (again, error) = parse_all(resent.as_bytes(), |left| left);
        if error != Some(ReplyError::LineTooLong) {
            assert_eq!(error, None);
            assert_eq!(again.as_slice(), std::slice::from_ref(reply));
        }
    }
});

/// Parses `input` fed in pieces of `step(left)` octets: the replies, then the error that ended
/// the parse (after which the parser is not used again, as the client does).
fn parse_all(
    input: &[u8],
    mut step: impl FnMut(usize) -> usize,
) -> (Vec<Reply>, Option<ReplyError>) {
    let mut parser = ReplyParser::new();
    let mut replies = Vec::new();
    let mut pos = 0;
    // Octets handed to the parser but not yet consumed are handed again with more after them.
    let mut fed_until = 0;
    while pos < input.len() {
        fed_until = (fed_until.max(pos) + step(input.len() - fed_until.max(pos))).min(input.len());
        match parser.parse(&input[pos..fed_until]) {
            Ok((reply, used)) => {
                assert!(used <= fed_until - pos);
                pos += used;
                match reply {
                    Some(reply) => replies.push(reply),
                    None => assert_eq!(pos, fed_until, "no reply, all consumed"),
                }
            }
            Err(e) => return (replies, Some(e)),
        }
    }
    (replies, None)
}
