//! A receiving SMTP session fed arbitrary bytes in arbitrary splits, its events answered
//! generically: must never panic, and its output must always be well-framed replies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    volley::smtp::server::fuzzing::fuzz_session(data);
});
