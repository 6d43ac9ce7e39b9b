//! Which hosts belong to the pod itself (loopback, link-local, unspecified): an IdP there may be
//! the task, which shares the pod's network namespace, so the injector refuses such endpoints in
//! a pod's token requests and the agent refuses a discovery document that points there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of local address `host` (a URL's host: a name, an IPv4 address, or an IPv6
/// address in brackets) is, if it is one of the pod's own: the task shares the pod's network namespace, so an IdP there
/// is the task itself, and link-local 169.254.0.0/16 is where clouds serve instance metadata.
/// Names are judged as written: a DNS name that resolves to loopback cannot be seen without a
/// lookup, and the webhook makes no network calls.
pub fn local_host(host: &str) -> Option<&'static str> {
    let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    };
    match ip {
        Some(ip) => local_ip(ip),
        None => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            (name == "localhost" || name.ends_with(".localhost"))
                .then_some("a loopback name (localhost)")
        }
    }
}

fn local_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("a loopback address (127.0.0.0/8)")
            } else if v4.is_link_local() {
                Some("a link-local address (169.254.0.0/16, where clouds serve instance metadata)")
            } else if v4.octets()[0] == 0 {
                // 0.0.0.0 (and the rest of 0/8) reaches the local host on Linux.
                Some("an unspecified address (0.0.0.0/8)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                local_ip(IpAddr::V4(v4))
            } else if v6.is_loopback() {
                Some("a loopback address (::1)")
            } else if v6.is_unspecified() {
                Some("an unspecified address (::)")
            } else if v6.segments()[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address (fe80::/10)")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts() {
        for (host, want) in [
            ("127.0.0.1", Some("loopback")),
            ("127.9.8.7", Some("loopback")),
            ("[::1]", Some("loopback")),
            ("[::ffff:127.0.0.1]", Some("loopback")),
            ("localhost", Some("loopback")),
            ("LocalHost.", Some("loopback")),
            ("idp.localhost", Some("loopback")),
            ("169.254.169.254", Some("link-local")),
            ("[fe80::1]", Some("link-local")),
            ("[febf::1]", Some("link-local")),
            ("0.0.0.0", Some("unspecified")),
            ("[::]", Some("unspecified")),
            ("10.0.0.1", None),
            ("[fec0::1]", None),
            ("[2001:db8::1]", None),
            ("idp.example.com", None),
            ("localhost.example.com", None),
            ("notlocalhost", None),
        ] {
            let got = local_host(host);
            match want {
                Some(kind) => assert!(got.is_some_and(|g| g.contains(kind)), "{host}: {got:?}"),
                None => assert_eq!(got, None, "{host}"),
            }
        }
    }
}
