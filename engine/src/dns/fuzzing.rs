//! Entry point for the DNS fuzz target (`fuzz/fuzz_targets/dns_answer.rs`): a nameserver's bytes
//! through everything the resolver does with them, without a socket.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use super::resolver::{Chased, MAX_CNAME_HOPS, chase_answer, mx_answer, negative_ttl_s};
use super::transport::answers;

/// The resolver's default cap on positive TTLs, which the fuzz target checks is honoured.
const MAX_TTL_S: u32 = 86_400;
const MAX_NEGATIVE_TTL_S: u32 = 900;

/// Parses `data` as a DNS message and, when it passes the transport's checks for the question
/// it carries, runs the CNAME chase, MX extraction and negative TTL on it for that question and
/// for MX, A and AAAA. Checks the answers' invariants; must never panic.
pub fn fuzz_answer(data: &[u8]) {
    let Ok(response) = Message::from_vec(data) else {
        return;
    };
    let Some(question) = response.queries.first() else {
        return;
    };
    let (name, asked_type) = (question.name.clone(), question.query_type);
    if !answers(&response, response.metadata.id, &name, asked_type) {
        return;
    }
    assert!(negative_ttl_s(&response, MAX_NEGATIVE_TTL_S) <= MAX_NEGATIVE_TTL_S);
    if response.metadata.response_code != ResponseCode::NoError {
        return;
    }
    for rtype in [asked_type, RecordType::MX, RecordType::A, RecordType::AAAA] {
        let mut hops = 0;
        let mut asked = name.clone();
        // A re-query would bring a new message; asking this one again for the chain's end
        // exercises the same path and must end (NODATA at the latest).
        for _ in 0..=MAX_CNAME_HOPS + 1 {
            match chase_answer(&response, &asked, rtype, MAX_TTL_S, &mut hops) {
                Chased::Records { records, ttl_s } => {
                    assert!(!records.is_empty());
                    assert!(ttl_s <= MAX_TTL_S);
                    assert!(records.iter().all(|r| r.record_type() == rtype));
                    assert!(hops <= MAX_CNAME_HOPS);
                    check_extraction(&records, rtype);
                    break;
                }
                Chased::NoData | Chased::ChainTooLong | Chased::Malformed => break,
                Chased::Ask(target) => {
                    assert!(target != asked);
                    asked = target;
                }
            }
        }
    }
}

/// What `Resolver::mx` and `Resolver::ip_addrs` take from the records.
fn check_extraction(records: &[RData], rtype: RecordType) {
    let mx = mx_answer(records);
    if rtype == RecordType::MX {
        assert_eq!(mx.records.len(), records.len());
        for record in &mx.records {
            assert_eq!(record.exchange, record.exchange.to_ascii_lowercase());
        }
        let _ = mx.is_null_mx();
    } else {
        assert!(mx.records.is_empty());
    }
}
