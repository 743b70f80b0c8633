//! CIDR notation: blocks as written by people (strict) and by configuration (lenient), and
//! whether an address is in a list of them.

use std::net::IpAddr;

use ipnet::IpNet;

/// Whether `address` is in one of `blocks`. The unknown caller ([`super::client_ip::UNKNOWN`]) is in
/// none, whatever they are: not even `0.0.0.0/0` names a caller paygate could not name.
pub fn in_blocks(blocks: &[IpNet], address: IpAddr) -> bool {
    let address = address.to_canonical();
    !super::client_ip::is_unknown(address) && blocks.iter().any(|net| net.contains(&address))
}

/// Why a block cannot be on a list of caller addresses, if it cannot: no packet comes from
/// 0.0.0.0/8 or `::`, and the unknown caller reads as 0.0.0.0, so such a block could only be
/// meant to admit callers paygate cannot name (wide blocks such as 0.0.0.0/0 are fine).
pub fn unfit_for_a_list(net: &IpNet) -> Option<String> {
    let unfit = match net {
        IpNet::V4(n) => n.prefix_len() >= 8 && n.network().octets()[0] == 0,
        IpNet::V6(n) => n.prefix_len() == 128 && n.network().is_unspecified(),
    };
    unfit.then(|| {
        format!(
            "{net} names no caller (0.0.0.0/8 and ::/128 are never a source; an unknown caller is admitted by no list)"
        )
    })
}

/// Parses `10.0.0.0/8`, or a bare address as a /32 or /128 (pingback sources, trusted proxies).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>().map(IpNet::from).map_err(|_| format!("{s:?} is not a CIDR block or IP address"))
}

/// Parses a CIDR block strictly (RFC 4632): a prefix length is required and the address must be
/// the network's first, so what is stored is what the person meant. Errors show the form to write.
pub fn parse_cidr_block(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        return Err(format!("{s:?} is an address, not a CIDR block: write {s}/{bits} for this address alone"));
    }
    let net = s.parse::<IpNet>().map_err(|_| {
        format!("{s:?} is not a CIDR block (write a network and prefix length, e.g. 203.0.113.0/24 or 2001:db8::/32)")
    })?;
    if net.trunc() != net {
        return Err(format!("{s:?} has bits set past its prefix length: write {}", net.trunc()));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_are_parsed_strictly_with_the_form_to_write() {
        assert_eq!(parse_cidr_block("203.0.113.0/24").unwrap().to_string(), "203.0.113.0/24");
        assert_eq!(parse_cidr_block(" 2001:db8::/32 ").unwrap().to_string(), "2001:db8::/32");
        let bare = parse_cidr_block("203.0.113.7").unwrap_err();
        assert!(bare.contains("write 203.0.113.7/32"), "{bare}");
        assert!(parse_cidr_block("2001:db8::1").unwrap_err().contains("2001:db8::1/128"));
        assert!(parse_cidr_block("10.1.2.3/8").unwrap_err().contains("write 10.0.0.0/8"));
        assert!(parse_cidr_block("10.0.0.0/33").is_err());
        assert!(parse_cidr_block("example.com/24").is_err());
    }

    #[test]
    fn the_unknown_caller_is_in_no_blocks_and_blocks_for_it_are_unfit() {
        let any: Vec<IpNet> = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        assert!(in_blocks(&any, "203.0.113.7".parse().unwrap()));
        assert!(in_blocks(&any, "2001:db8::1".parse().unwrap()));
        for unknown in ["0.0.0.0", "::", "::ffff:0.0.0.0"] {
            assert!(!in_blocks(&any, unknown.parse().unwrap()), "{unknown}");
        }
        for unfit in ["0.0.0.0/32", "0.0.0.0/8", "0.1.2.0/24", "::/128"] {
            assert!(unfit_for_a_list(&unfit.parse().unwrap()).is_some(), "{unfit}");
        }
        for fit in ["0.0.0.0/0", "0.0.0.0/7", "::/0", "10.0.0.0/8", "1.0.0.0/8", "::1/128"] {
            assert_eq!(unfit_for_a_list(&fit.parse().unwrap()), None, "{fit}");
        }
    }

    #[test]
    fn lenient_cidrs_take_bare_addresses() {
        assert_eq!(parse_cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
    }
}
