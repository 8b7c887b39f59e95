//! DNS answers as a nameserver may send them: parsed, checked against the question, CNAMEs
//! chased, MX and addresses extracted and negative TTLs derived, as the resolver does; the
//! invariants are checked in `volley::dns::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    volley::dns::fuzzing::fuzz_answer(data);
});
