//! Where outgoing calls may go (merchant webhooks, a channel's provider API). Requests to
//! loopback, private, link-local and other internal addresses are refused (a merchant could
//! otherwise point paygate at its own network), unless configuration allows them. Host names are checked when they resolve, at send time, so a name
//! that later resolves to an internal address is refused too.

use std::net::{IpAddr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// True for addresses an outgoing call must not reach by default.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // carrier-grade NAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let embedded = |hi: u16, lo: u16| std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            // Forms that carry an IPv4 address: mapped, compatible, NAT64 (64:ff9b::/96), 6to4 (2002::/16).
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            if seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return is_internal(IpAddr::V4(embedded(seg[6], seg[7])));
            }
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_internal(IpAddr::V4(embedded(seg[6], seg[7])));
            }
            if seg[0] == 0x2002 {
                return is_internal(IpAddr::V4(embedded(seg[1], seg[2])));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        }
    }
}

/// Checks a webhook URL as given; `Err` names the problem.
pub fn check_url(raw: &str, allow_internal: bool) -> Result<url::Url, String> {
    let url = crate::validation::parse_url(raw)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    match url.host() {
        None => return Err("has no host".into()),
        Some(url::Host::Ipv4(ip)) if !allow_internal && is_internal(IpAddr::V4(ip)) => {
            return Err(format!("points at an internal address ({ip}); paygate calls only public addresses"));
        }
        Some(url::Host::Ipv6(ip)) if !allow_internal && is_internal(IpAddr::V6(ip)) => {
            return Err(format!("points at an internal address ({ip}); paygate calls only public addresses"));
        }
        Some(url::Host::Domain(d)) if !allow_internal && (d == "localhost" || d.ends_with(".localhost")) => {
            return Err("points at localhost; paygate calls only public addresses".into());
        }
        _ => {}
    }
    Ok(url)
}

/// `check_url`, with an internal-address refusal naming the setting that allows such targets, so
/// the person who meets it (often with the simulator on loopback) knows what to change.
pub fn check_url_naming(raw: &str, allow_internal: bool, setting: &str) -> Result<url::Url, String> {
    check_url(raw, allow_internal).map_err(|problem| {
        if problem.ends_with("paygate calls only public addresses") {
            format!("{problem} (set {setting}=true to allow internal targets, e.g. a local simulator)")
        } else {
            problem
        }
    })
}

/// A resolver that drops internal addresses, so a public name cannot lead to an internal host.
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.filter(|a| !is_internal(a.ip())).collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1/hook",
            "http://10.1.2.3/hook",
            "https://192.168.0.10/",
            "http://172.16.5.4/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://localhost:8080/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[::a9fe:a9fe]/",
            "http://[2002:a00:1::1]/",
            "http://[fec0::1]/",
        ] {
            assert!(check_url(url, false).is_err(), "{url}");
            assert!(check_url(url, true).is_ok(), "{url} allowed by configuration");
        }
        assert!(check_url("https://hooks.example.com/paygate", false).is_ok());
        assert!(check_url("https://8.8.8.8/hook", false).is_ok());
        assert!(check_url("https://[2606:4700::1111]/hook", false).is_ok());
        assert!(check_url("https://[64:ff9b::808:808]/hook", false).is_ok(), "NAT64 of a public address");
        assert!(check_url("ftp://example.com/", true).is_err());
        assert!(check_url("https://user:pw@example.com/", true).is_err());
        assert!(check_url("not a url", true).is_err());
        let named = check_url_naming("http://127.0.0.1:8090", false, "PAYGATE_PROVIDER_ALLOW_PRIVATE_TARGETS");
        assert!(named.unwrap_err().contains("PAYGATE_PROVIDER_ALLOW_PRIVATE_TARGETS=true"));
        assert!(!check_url_naming("ftp://x.example", false, "X").unwrap_err().contains("X=true"));
    }
}
