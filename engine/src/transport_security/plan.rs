//! Which transport security a connection to one MX host must have, and how its certificate is
//! checked. Pure: what DNS and the MTA-STS cache said comes in, a `HopTls` (or the refusal that
//! keeps mail from that host) goes out.
//!
//! Precedence (RFC 8461 2, RFC 7672): validated TLSA records of the host (DANE) first, then the
//! domain's MTA-STS policy, then the domain's own `tls` setting. `tls = "dane"` and
//! `tls = "mta-sts"` require the one named (a host without it is refused, so mail waits).

use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, Error, SignatureScheme};

use super::ClientTls;
use super::dane::{DaneVerifier, Tlsa};
use super::mta_sts::{CachedPolicy, Mode};
use crate::config::OutboundTls;
use crate::metrics::{TlsPolicyLabel, TlsResult};
use crate::smtp::client::{Reply, TlsPolicy};

/// What is known of the destination domain, once per connection attempt.
#[derive(Debug, Clone)]
pub struct Destination {
    pub domain: String,
    /// The domain's `tls` setting.
    pub setting: OutboundTls,
    /// Its MTA-STS policy in force (`mode: none` is no policy).
    pub mta_sts: Option<Rc<CachedPolicy>>,
    /// Whether its MX hosts' TLSA records are looked up (false: DANE ignored).
    pub dane: bool,
}

impl Destination {
    pub fn new(domain: &str, setting: OutboundTls, mta_sts: Option<Rc<CachedPolicy>>) -> Self {
        Destination {
            domain: domain.to_string(),
            setting,
            mta_sts: mta_sts.filter(|p| p.policy.mode != Mode::None),
            dane: true,
        }
    }

    /// The destination for mail saying `TLS-Required: No` (RFC 8689 5): no DANE, no MTA-STS,
    /// and `tls = "dane"` or `"mta-sts"` read as opportunistic; `"required"` and `"off"` (the
    /// operator's own choices, not the recipient's policies) stay.
    pub fn ignoring_policies(domain: &str, setting: OutboundTls) -> Self {
        let setting = match setting {
            OutboundTls::Dane | OutboundTls::MtaSts => OutboundTls::Opportunistic,
            other => other,
        };
        Destination {
            domain: domain.to_string(),
            setting,
            mta_sts: None,
            dane: false,
        }
    }
}

/// What the TLSA lookup of one MX host gave.
#[derive(Debug, Clone)]
pub enum DaneLookup {
    /// DANE does not apply: `[dns] dnssec` off, a route, an MX answer or addresses not
    /// validated, or no validated TLSA records.
    NotApplicable,
    /// A validated TLSA RRset: its usable records (empty when none is usable for SMTP).
    Records(Vec<Tlsa>),
    /// The lookup failed (SERVFAIL from a validating resolver is a bogus answer; a timeout).
    Failed(String),
}

/// How to connect to one MX host.
#[derive(Debug, Clone)]
pub enum HopTls {
    /// TLS required, the chain checked against these TLSA records.
    Dane(Vec<Tlsa>),
    /// Validated TLSA records, none usable: TLS required, the certificate not checked (RFC 7672
    /// 2.2).
    DaneUnusable,
    /// TLS required, the certificate checked for the host name (WebPKI) under an MTA-STS policy.
    MtaSts(Rc<CachedPolicy>),
    /// An MTA-STS policy in mode `testing`: TLS when offered, the certificate checked and the
    /// result only counted; `listed`: the host matches the policy's `mx`.
    MtaStsTesting {
        policy: Rc<CachedPolicy>,
        listed: bool,
    },
    /// `tls = "required"`: TLS required, the certificate checked for the host name (WebPKI).
    Required,
    /// STARTTLS when offered, the certificate not checked.
    Opportunistic,
    /// No STARTTLS.
    Off,
}

/// A host the policy keeps mail from, and why.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub policy: TlsPolicyLabel,
    pub reply: Reply,
}

fn refuse(policy: TlsPolicyLabel, text: String) -> Refusal {
    Refusal {
        policy,
        reply: Reply::local(451, (4, 7, 5), text),
    }
}

/// The transport security of a connection to MX host `host` of `dest`.
pub fn decide(dest: &Destination, host: &str, dane: DaneLookup) -> Result<HopTls, Refusal> {
    let domain = &dest.domain;
    match dane {
        DaneLookup::Failed(why) => {
            return Err(refuse(
                TlsPolicyLabel::Dane,
                format!("DANE: TLSA lookup of _25._tcp.{host} failed: {why}"),
            ));
        }
        DaneLookup::Records(records) if records.is_empty() => return Ok(HopTls::DaneUnusable),
        DaneLookup::Records(records) => return Ok(HopTls::Dane(records)),
        DaneLookup::NotApplicable => {}
    }
    if dest.setting == OutboundTls::Dane {
        return Err(refuse(
            TlsPolicyLabel::Dane,
            format!(
                "DANE required for {domain} (tls = \"dane\") but {host} has no DNSSEC-validated \
                 TLSA records"
            ),
        ));
    }
    if let Some(policy) = &dest.mta_sts {
        let listed = policy.policy.matches(host);
        let enforce = policy.policy.mode == Mode::Enforce || dest.setting == OutboundTls::MtaSts;
        return match (enforce, listed) {
            (true, true) => Ok(HopTls::MtaSts(policy.clone())),
            (true, false) => Err(refuse(
                TlsPolicyLabel::MtaSts,
                format!(
                    "MTA-STS policy of {domain} (id {}, mode enforce): {host} is not one of its \
                     mx hosts {:?}",
                    policy.id, policy.policy.mx
                ),
            )),
            (false, _) => Ok(HopTls::MtaStsTesting {
                policy: policy.clone(),
                listed,
            }),
        };
    }
    match dest.setting {
        OutboundTls::MtaSts => Err(refuse(
            TlsPolicyLabel::MtaSts,
            format!("MTA-STS required for {domain} (tls = \"mta-sts\") but it has no policy"),
        )),
        OutboundTls::Required => Ok(HopTls::Required),
        OutboundTls::Opportunistic | OutboundTls::Dane => Ok(HopTls::Opportunistic),
        OutboundTls::Off => Ok(HopTls::Off),
    }
}

impl HopTls {
    /// Whether a recipient's policy (DANE or MTA-STS `enforce`) makes TLS mandatory here.
    pub fn policy_requires_tls(&self) -> bool {
        matches!(
            self,
            HopTls::Dane(_) | HopTls::DaneUnusable | HopTls::MtaSts(_)
        )
    }

    pub fn label(&self) -> TlsPolicyLabel {
        match self {
            HopTls::Dane(_) | HopTls::DaneUnusable => TlsPolicyLabel::Dane,
            HopTls::MtaSts(_) => TlsPolicyLabel::MtaSts,
            HopTls::MtaStsTesting { .. } => TlsPolicyLabel::MtaStsTesting,
            HopTls::Required => TlsPolicyLabel::Required,
            HopTls::Opportunistic | HopTls::Off => TlsPolicyLabel::None,
        }
    }

    /// When the SMTP session uses STARTTLS.
    pub fn session_policy(&self) -> TlsPolicy {
        match self {
            HopTls::Dane(_) | HopTls::DaneUnusable | HopTls::MtaSts(_) | HopTls::Required => {
                TlsPolicy::Required
            }
            HopTls::MtaStsTesting { .. } | HopTls::Opportunistic => TlsPolicy::Opportunistic,
            HopTls::Off => TlsPolicy::Off,
        }
    }

    /// Whether a completed handshake means a certificate checked by DANE, MTA-STS or
    /// `tls = "required"` (what REQUIRETLS messages need).
    pub fn verifies(&self) -> bool {
        matches!(self, HopTls::Dane(_) | HopTls::MtaSts(_) | HopTls::Required)
    }

    /// What requires TLS, for the failure when the server does not offer it.
    pub fn required_by(&self, host: &str, domain: &str) -> String {
        match self {
            HopTls::Dane(_) | HopTls::DaneUnusable => {
                format!("DANE (validated TLSA records of _25._tcp.{host})")
            }
            HopTls::MtaSts(p) => format!("the MTA-STS policy of {domain} (id {})", p.id),
            _ => "policy (tls = \"required\")".into(),
        }
    }

    /// The client configuration for the handshake with `host`, and for `testing` what its
    /// certificate check found.
    pub fn client_config(
        &self,
        tls: &ClientTls,
        host: &str,
        domain: &str,
    ) -> (Arc<ClientConfig>, Option<Arc<Observed>>) {
        let custom = |verifier: Arc<dyn ServerCertVerifier>| {
            let config = ClientConfig::builder_with_provider(tls.provider.clone())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(verifier)
                        .with_no_client_auth()
                });
            match config {
                Ok(c) => Arc::new(c),
                Err(e) => panic!("the ring provider supports the default TLS versions: {e}"),
            }
        };
        match self {
            HopTls::Dane(records) => {
                let verifier =
                    DaneVerifier::new(records.clone(), host, domain, tls.provider.clone());
                (custom(Arc::new(verifier)), None)
            }
            HopTls::MtaSts(_) | HopTls::Required => (tls.verified.clone(), None),
            HopTls::MtaStsTesting { .. } => {
                match WebPkiServerVerifier::builder_with_provider(
                    tls.roots.clone(),
                    tls.provider.clone(),
                )
                .build()
                {
                    Ok(webpki) => {
                        let observed = Arc::new(Observed::default());
                        let verifier = ObservingVerifier {
                            webpki,
                            observed: observed.clone(),
                        };
                        (custom(Arc::new(verifier)), Some(observed))
                    }
                    Err(_) => (tls.opportunistic.clone(), None),
                }
            }
            HopTls::DaneUnusable | HopTls::Opportunistic | HopTls::Off => {
                (tls.opportunistic.clone(), None)
            }
        }
    }

    /// The result of a connection that got through TLS (`observed`: the `testing` check).
    pub fn result_with_tls(&self, observed: Option<&Observed>) -> TlsResult {
        match self {
            HopTls::Dane(_) | HopTls::MtaSts(_) | HopTls::Required => TlsResult::Verified,
            HopTls::MtaStsTesting { listed, .. } => {
                if *listed && observed.is_some_and(|o| o.failure().is_none()) {
                    TlsResult::Verified
                } else {
                    TlsResult::Encrypted
                }
            }
            HopTls::DaneUnusable | HopTls::Opportunistic | HopTls::Off => TlsResult::Encrypted,
        }
    }

    /// What the accounting log's `tls` field says for a connection with TLS up.
    pub fn verified_by(&self, result: TlsResult) -> &'static str {
        match (self, result) {
            (HopTls::Dane(_), _) => "dane",
            (HopTls::MtaSts(_) | HopTls::MtaStsTesting { .. }, TlsResult::Verified) => "mta-sts",
            (HopTls::Required, _) => "webpki",
            _ => "encrypted",
        }
    }

    /// For `testing`: what failed (logged and counted, the mail goes anyway).
    pub fn testing_failure(&self, observed: Option<&Observed>, tls_up: bool) -> Option<String> {
        let HopTls::MtaStsTesting { policy, listed } = self else {
            return None;
        };
        let what = if !listed {
            format!("not one of the mx hosts {:?}", policy.policy.mx)
        } else if !tls_up {
            "STARTTLS not offered".to_string()
        } else {
            observed?.failure()?.to_string()
        };
        Some(format!(
            "MTA-STS policy of {} (id {}, mode testing): {what}",
            policy.domain, policy.id
        ))
    }
}

/// What the `testing` certificate check found.
#[derive(Debug, Default)]
pub struct Observed(OnceLock<String>);

impl Observed {
    pub fn failure(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// WebPKI that records a failure instead of failing the handshake (MTA-STS `testing`).
#[derive(Debug)]
struct ObservingVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    observed: Arc<Observed>,
}

impl ServerCertVerifier for ObservingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Err(e) = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            let _ = self.observed.0.set(e.to_string());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::super::mta_sts::Policy;
    use super::*;

    fn policy(mode: Mode) -> Rc<CachedPolicy> {
        Rc::new(CachedPolicy {
            domain: "a.test".into(),
            id: "7".into(),
            policy: Policy {
                mode,
                mx: vec!["*.a.test".into()],
                max_age_s: 86_400,
            },
            fetched_at_s: 0,
        })
    }

    fn dest(setting: OutboundTls, mode: Option<Mode>) -> Destination {
        Destination::new("a.test", setting, mode.map(policy))
    }

    fn record() -> Tlsa {
        Tlsa::new(3, 1, 1, vec![0; 32]).unwrap()
    }

    #[test]
    fn dane_comes_first() {
        let d = dest(OutboundTls::Off, Some(Mode::Enforce));
        let hop = decide(&d, "elsewhere.test", DaneLookup::Records(vec![record()])).unwrap();
        assert!(
            matches!(hop, HopTls::Dane(_)),
            "over MTA-STS and the setting: {hop:?}"
        );
        assert_eq!(hop.session_policy(), TlsPolicy::Required);
        let unusable = decide(&d, "mx.a.test", DaneLookup::Records(vec![])).unwrap();
        assert!(matches!(unusable, HopTls::DaneUnusable));
        assert_eq!(
            unusable.session_policy(),
            TlsPolicy::Required,
            "still mandatory"
        );
        let failed = decide(&d, "mx.a.test", DaneLookup::Failed("SERVFAIL".into())).unwrap_err();
        assert_eq!(failed.policy, TlsPolicyLabel::Dane);
        assert!(
            failed.reply.text.contains("_25._tcp.mx.a.test"),
            "{}",
            failed.reply
        );
        assert_eq!(failed.reply.code, 451);
    }

    #[test]
    fn mta_sts_enforce_testing_and_none() {
        let enforce = dest(OutboundTls::Opportunistic, Some(Mode::Enforce));
        let hop = decide(&enforce, "mx.a.test", DaneLookup::NotApplicable).unwrap();
        assert!(matches!(hop, HopTls::MtaSts(_)));
        assert_eq!(hop.session_policy(), TlsPolicy::Required);
        let refused = decide(&enforce, "mx.b.test", DaneLookup::NotApplicable).unwrap_err();
        assert_eq!(refused.policy, TlsPolicyLabel::MtaSts);
        assert!(
            refused
                .reply
                .text
                .contains("MTA-STS policy of a.test (id 7"),
            "{}",
            refused.reply
        );

        let testing = dest(OutboundTls::Required, Some(Mode::Testing));
        let hop = decide(&testing, "mx.b.test", DaneLookup::NotApplicable).unwrap();
        assert!(matches!(hop, HopTls::MtaStsTesting { listed: false, .. }));
        assert_eq!(
            hop.session_policy(),
            TlsPolicy::Opportunistic,
            "testing never holds mail"
        );
        assert!(
            hop.testing_failure(None, true)
                .unwrap()
                .contains("not one of the mx hosts")
        );
        let listed = decide(&testing, "mx.a.test", DaneLookup::NotApplicable).unwrap();
        let fine = Observed::default();
        assert_eq!(listed.result_with_tls(Some(&fine)), TlsResult::Verified);
        assert_eq!(listed.verified_by(TlsResult::Verified), "mta-sts");
        assert_eq!(listed.testing_failure(Some(&fine), true), None);
        let bad = Observed::default();
        let _ = bad.0.set("UnknownIssuer".into());
        assert_eq!(listed.result_with_tls(Some(&bad)), TlsResult::Encrypted);
        assert!(
            listed
                .testing_failure(Some(&bad), true)
                .unwrap()
                .contains("UnknownIssuer")
        );
        assert!(
            listed
                .testing_failure(None, false)
                .unwrap()
                .contains("STARTTLS not offered")
        );

        let withdrawn = dest(OutboundTls::Opportunistic, Some(Mode::None));
        assert!(withdrawn.mta_sts.is_none(), "mode none is no policy");
        let hop = decide(&withdrawn, "mx.b.test", DaneLookup::NotApplicable).unwrap();
        assert!(matches!(hop, HopTls::Opportunistic));
    }

    #[test]
    fn a_required_policy_without_it_refuses_and_settings_apply_last() {
        let dane = dest(OutboundTls::Dane, Some(Mode::Enforce));
        let e = decide(&dane, "mx.a.test", DaneLookup::NotApplicable).unwrap_err();
        assert!(e.reply.text.contains("tls = \"dane\""), "{}", e.reply);
        let sts = dest(OutboundTls::MtaSts, None);
        let e = decide(&sts, "mx.a.test", DaneLookup::NotApplicable).unwrap_err();
        assert!(e.reply.text.contains("no policy"), "{}", e.reply);
        let sts_testing = dest(OutboundTls::MtaSts, Some(Mode::Testing));
        assert!(
            decide(&sts_testing, "mx.b.test", DaneLookup::NotApplicable).is_err(),
            "tls = \"mta-sts\" enforces a testing policy"
        );
        for (setting, policy) in [
            (OutboundTls::Required, TlsPolicy::Required),
            (OutboundTls::Opportunistic, TlsPolicy::Opportunistic),
            (OutboundTls::Off, TlsPolicy::Off),
        ] {
            let hop = decide(&dest(setting, None), "mx.a.test", DaneLookup::NotApplicable).unwrap();
            assert_eq!(hop.session_policy(), policy, "{setting:?}");
        }
    }
}
