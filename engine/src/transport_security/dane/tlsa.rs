//! TLSA records (RFC 6698) as DANE for SMTP uses them (RFC 7672 3.1): DANE-TA(2) and DANE-EE(3),
//! selectors Cert(0) and SPKI(1), matching types Full(0), SHA2-256(1) and SHA2-512(2). PKIX-TA(0)
//! and PKIX-EE(1) are unusable for SMTP (RFC 7672 3.1.3), as are unknown values and digests of the
//! wrong length. Pure.

use hickory_proto::rr::RData;
use hickory_proto::rr::rdata::tlsa::{
    CertUsage, Matching as HickoryMatching, Selector as HickorySelector,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// DANE-TA(2): a trust anchor in the server's chain (or the record itself).
    TrustAnchor,
    /// DANE-EE(3): the server's own certificate or key; names and dates are not checked.
    EndEntity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    /// The whole DER certificate.
    Certificate,
    /// Its DER SubjectPublicKeyInfo.
    PublicKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    Exact,
    Sha256,
    Sha512,
}

/// One usable TLSA record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: Usage,
    pub selector: Selector,
    pub matching: Matching,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// The record from its four fields, when it is usable for SMTP.
    pub fn new(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Option<Tlsa> {
        let usage = match usage {
            2 => Usage::TrustAnchor,
            3 => Usage::EndEntity,
            _ => return None,
        };
        let selector = match selector {
            0 => Selector::Certificate,
            1 => Selector::PublicKey,
            _ => return None,
        };
        let (matching, length) = match matching {
            0 => (Matching::Exact, None),
            1 => (Matching::Sha256, Some(32)),
            2 => (Matching::Sha512, Some(64)),
            _ => return None,
        };
        if data.is_empty() || length.is_some_and(|n| n != data.len()) {
            return None;
        }
        Some(Tlsa {
            usage,
            selector,
            matching,
            data,
        })
    }

    /// Whether `certificate` (DER) is what this record designates.
    pub fn matches(&self, certificate: &[u8]) -> bool {
        let selected = match self.selector {
            Selector::Certificate => Some(certificate),
            Selector::PublicKey => super::x509::subject_public_key_info(certificate),
        };
        let Some(selected) = selected else {
            return false;
        };
        match self.matching {
            Matching::Exact => selected == self.data.as_slice(),
            Matching::Sha256 => {
                ring::digest::digest(&ring::digest::SHA256, selected).as_ref() == self.data
            }
            Matching::Sha512 => {
                ring::digest::digest(&ring::digest::SHA512, selected).as_ref() == self.data
            }
        }
    }
}

/// The usable records among a TLSA answer.
pub fn usable(records: &[RData]) -> Vec<Tlsa> {
    records
        .iter()
        .filter_map(|r| match r {
            RData::TLSA(t) => {
                let usage = match t.cert_usage {
                    CertUsage::PkixTa => 0,
                    CertUsage::PkixEe => 1,
                    CertUsage::DaneTa => 2,
                    CertUsage::DaneEe => 3,
                    _ => return None,
                };
                let selector = match t.selector {
                    HickorySelector::Full => 0,
                    HickorySelector::Spki => 1,
                    _ => return None,
                };
                let matching = match t.matching {
                    HickoryMatching::Raw => 0,
                    HickoryMatching::Sha256 => 1,
                    HickoryMatching::Sha512 => 2,
                    _ => return None,
                };
                Tlsa::new(usage, selector, matching, t.cert_data.clone())
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_smtp_can_use() {
        assert!(Tlsa::new(3, 1, 1, vec![0; 32]).is_some());
        assert!(Tlsa::new(2, 0, 2, vec![0; 64]).is_some());
        assert!(Tlsa::new(3, 0, 0, vec![1, 2, 3]).is_some());
        assert!(Tlsa::new(1, 1, 1, vec![0; 32]).is_none(), "PKIX-EE");
        assert!(Tlsa::new(0, 1, 1, vec![0; 32]).is_none(), "PKIX-TA");
        assert!(Tlsa::new(3, 2, 1, vec![0; 32]).is_none(), "selector");
        assert!(Tlsa::new(3, 1, 3, vec![0; 32]).is_none(), "matching type");
        assert!(
            Tlsa::new(3, 1, 1, vec![0; 31]).is_none(),
            "SHA-256 of 31 bytes"
        );
        assert!(
            Tlsa::new(3, 1, 2, vec![0; 32]).is_none(),
            "SHA-512 of 32 bytes"
        );
        assert!(Tlsa::new(3, 0, 0, Vec::new()).is_none());
    }
}
