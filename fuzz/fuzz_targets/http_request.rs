//! The API's HTTP request parser on arbitrary bytes, for a loopback or remote peer with or
//! without a token. A request is only ever complete for an authorized client; a complete
//! request's body is what Content-Length said and lies inside the buffer; any prefix of a
//! complete request is incomplete, never a different request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volley::api::http::{BODY_BYTES_MAX, HEAD_BYTES_MAX, parse_for_fuzzing};

const TOKEN: &str = "s3cret";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    let loopback = flags & 1 != 0;
    let token = if flags & 2 != 0 { TOKEN } else { "" };
    match parse_for_fuzzing(buf, loopback, token) {
        Ok(Some((request, consumed, _close))) => {
            assert!(consumed <= buf.len());
            assert!(request.body.len() <= BODY_BYTES_MAX);
            assert_eq!(
                &buf[consumed - request.body.len()..consumed],
                &request.body[..]
            );
            if token.is_empty() {
                assert!(loopback, "a remote client without a token got through");
            } else {
                let authorization = request.authorization.as_deref().unwrap_or_default();
                assert_eq!(
                    authorization.strip_prefix("Bearer ").map(str::trim),
                    Some(TOKEN)
                );
            }
            assert!(!request.path.contains('?'));
            for cut in [consumed - 1, consumed / 2, 0] {
                match parse_for_fuzzing(&buf[..cut], loopback, token) {
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        panic!("a prefix of {consumed} octets cut at {cut} is a request")
                    }
                    // A head that only ends in the cut part may look malformed so far.
                    Err(status) => assert!(status == 400 || status == 431, "{status}"),
                }
            }
        }
        Ok(None) => assert!(buf.len() <= HEAD_BYTES_MAX || has_head_end(buf)),
        Err(status) => assert!(matches!(status, 400 | 401 | 413 | 431), "{status}"),
    }
});

fn has_head_end(buf: &[u8]) -> bool {
    buf.windows(2).any(|w| w == b"\n\n") || buf.windows(4).any(|w| w == b"\r\n\r\n")
}
