//! The SMTP command parser on arbitrary bytes: must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    volley::smtp::server::fuzzing::fuzz_command(data);
});
