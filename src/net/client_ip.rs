//! Who sent a request: the peer address, or, when the peer is a trusted proxy, the nearest
//! untrusted address in `X-Forwarded-For`. Never believe the header from anyone else, and never
//! make the proxy itself the caller: a proxy's own request (no header), a chain of trusted hops
//! only, or a chain paygate cannot read answers [`UNKNOWN`], which no non-empty list admits
//! (see `net::in_blocks`).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use http::HeaderMap;
use ipnet::IpNet;

/// The caller paygate cannot name. The unspecified address is never a packet's source, so it
/// stands for "unknown" without an `Option` through every caller; lists refuse it and may not
/// name it (0.0.0.0/8 and ::/128 blocks are refused).
pub const UNKNOWN: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Whether `address` is the unknown caller (either unspecified address, or one mapped to IPv6).
pub fn is_unknown(address: IpAddr) -> bool {
    address.to_canonical().is_unspecified()
}

/// An address as messages, logs and audit entries show it: "unknown" for [`UNKNOWN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown(pub IpAddr);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_unknown(self.0) { f.write_str("unknown") } else { self.0.fmt(f) }
    }
}

pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    // Walk right to left: each hop appends the address it received from. Running out of hops
    // while every one was trusted leaves no client to name.
    for header in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = header.to_str() else { return UNKNOWN };
        for hop in value.split(',').rev() {
            let Some(ip) = parse_hop(hop.trim()) else { return UNKNOWN };
            let client = ip.to_canonical();
            if !trusted(&client) {
                return client;
            }
        }
    }
    UNKNOWN
}

/// `203.0.113.7`, `2001:db8::1`, or with a port as some proxies write it: `203.0.113.7:443`, `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let proxies = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(resolve(ip("8.8.8.8"), &headers(&["174.36.92.186"]), &proxies), ip("8.8.8.8"));
        assert_eq!(resolve(ip("8.8.8.8"), &headers(&[]), &[]), ip("8.8.8.8"));
    }

    #[test]
    fn a_trusted_proxy_forwards_the_nearest_untrusted_hop() {
        let proxies = ["10.0.0.0/8".parse().unwrap()];
        // A client-supplied spoofed first entry is ignored: the rightmost untrusted hop wins.
        let h = headers(&["174.36.92.186, 8.8.4.4, 10.1.1.1"]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &proxies), ip("8.8.4.4"));
        let h = headers(&["174.36.92.186", "10.1.1.1"]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &proxies), ip("174.36.92.186"));
    }

    #[test]
    fn an_unreadable_chain_is_an_unknown_caller_never_the_proxy() {
        let proxies = ["10.0.0.0/8".parse().unwrap()];
        for garbage in ["not-an-ip", "8.8.8.8, junk", ""] {
            assert_eq!(resolve(ip("10.0.0.2"), &headers(&[garbage]), &proxies), ip("0.0.0.0"), "{garbage:?}");
        }
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(resolve(ip("10.0.0.2"), &h, &proxies), ip("0.0.0.0"));
    }

    #[test]
    fn a_proxys_own_request_or_a_chain_of_proxies_is_an_unknown_caller_never_the_proxy() {
        let proxies = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(resolve(ip("10.0.0.2"), &headers(&[]), &proxies), UNKNOWN, "no x-forwarded-for");
        assert_eq!(resolve(ip("10.0.0.2"), &headers(&["10.1.1.1, 10.2.2.2"]), &proxies), UNKNOWN);
        assert_eq!(resolve(ip("10.0.0.2"), &headers(&["10.1.1.1", "10.2.2.2"]), &proxies), UNKNOWN);
        // A forwarded unspecified address is unknown too, however it is written.
        assert!(is_unknown(resolve(ip("10.0.0.2"), &headers(&["::ffff:0.0.0.0"]), &proxies)));
        assert!(is_unknown(resolve(ip("10.0.0.2"), &headers(&["::"]), &proxies)));
    }

    #[test]
    fn unknown_reads_as_unknown() {
        assert_eq!(Shown(UNKNOWN).to_string(), "unknown");
        assert_eq!(Shown(ip("::")).to_string(), "unknown");
        assert_eq!(Shown(ip("203.0.113.7")).to_string(), "203.0.113.7");
    }

    #[test]
    fn hops_with_ports_are_read() {
        let proxies = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(resolve(ip("10.0.0.2"), &headers(&["203.0.113.7:443"]), &proxies), ip("203.0.113.7"));
        assert_eq!(resolve(ip("10.0.0.2"), &headers(&["[2001:db8::1]:443"]), &proxies), ip("2001:db8::1"));
    }

    #[test]
    fn ipv4_mapped_ipv6_peers_are_treated_as_ipv4() {
        let proxies = ["127.0.0.1/32".parse().unwrap()];
        let h = headers(&["174.36.92.186"]);
        assert_eq!(resolve(ip("::ffff:127.0.0.1"), &h, &proxies), ip("174.36.92.186"));
    }
}
