//! Forward-confirmed reverse DNS of a VMTA: the PTR of its source address names its EHLO host, and
//! that host resolves back to the address. Mailbox providers refuse mail from addresses without it
//! (Gmail, Outlook.com, Yahoo).

use std::net::IpAddr;

/// `4.3.2.1.in-addr.arpa` / the ip6.arpa nibble name of an address.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => super::dnsbl::query_name(ip, "in-addr.arpa"),
        IpAddr::V6(_) => super::dnsbl::query_name(ip, "ip6.arpa"),
    }
}

/// A host name as compared: lowercase, without the root's dot.
pub fn normalized(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The check's outcome for one VMTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// What is wrong, in words an operator can act on.
    Fail(String),
}

/// Judges the PTR names of `ip` and the addresses of `ehlo` (both as found).
pub fn verdict(ip: IpAddr, ehlo: &str, ptr_names: &[String], forward: &[IpAddr]) -> Verdict {
    let ehlo = normalized(ehlo);
    if ptr_names.is_empty() {
        return Verdict::Fail(format!("{ip} has no PTR record (want {ehlo})"));
    }
    if !ptr_names.iter().any(|p| normalized(p) == ehlo) {
        return Verdict::Fail(format!(
            "PTR of {ip} is {} (want {ehlo})",
            ptr_names.join(", ")
        ));
    }
    if !forward.contains(&ip) {
        return Verdict::Fail(if forward.is_empty() {
            format!("{ehlo} has no A/AAAA record (want {ip})")
        } else {
            let list: Vec<String> = forward.iter().map(IpAddr::to_string).collect();
            format!("{ehlo} resolves to {} (want {ip})", list.join(", "))
        });
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reverse_names() {
        assert_eq!(reverse_name(ip("127.0.0.2")), "2.0.0.127.in-addr.arpa");
        assert!(reverse_name(ip("::1")).starts_with("1.0.0.0."));
        assert!(reverse_name(ip("::1")).ends_with(".ip6.arpa"));
    }

    #[test]
    fn both_directions_must_agree() {
        let v = |ptr: &[&str], fwd: &[&str]| {
            verdict(
                ip("127.0.0.2"),
                "V1.volley.test",
                &ptr.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                &fwd.iter().map(|s| ip(s)).collect::<Vec<_>>(),
            )
        };
        assert_eq!(v(&["v1.volley.test."], &["127.0.0.2"]), Verdict::Pass);
        assert_eq!(
            v(
                &["other.test.", "v1.VOLLEY.test"],
                &["127.0.0.9", "127.0.0.2"]
            ),
            Verdict::Pass
        );
        assert!(matches!(v(&[], &["127.0.0.2"]), Verdict::Fail(m) if m.contains("no PTR")));
        assert!(
            matches!(v(&["mail.other.test"], &["127.0.0.2"]), Verdict::Fail(m) if m.contains("mail.other.test"))
        );
        assert!(
            matches!(v(&["v1.volley.test"], &["127.0.0.9"]), Verdict::Fail(m) if m.contains("resolves to 127.0.0.9"))
        );
        assert!(matches!(v(&["v1.volley.test"], &[]), Verdict::Fail(m) if m.contains("no A/AAAA")));
    }
}
