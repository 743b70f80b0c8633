//! Paymentwall request and pingback signatures (docs/paymentwall.md sections 2 and 3).
//!
//! v2/v3: every parameter except the signature, keys sorted byte-wise with nested `name[sub]`
//! parameters grouped at their parent's position, `key=value` concatenated, secret appended,
//! MD5 (v2) or SHA-256 (v3) in lowercase hex. v1 signs a fixed list of fields instead.

use std::collections::BTreeMap;

use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How Paymentwall signs a channel's requests and pingbacks (docs/paymentwall.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignVersion {
    V1,
    V2,
    V3,
}

impl SignVersion {
    pub fn from_number(n: u32) -> Option<Self> {
        match n {
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            3 => Some(Self::V3),
            _ => None,
        }
    }

    pub fn number(self) -> u32 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
            Self::V3 => 3,
        }
    }
}

/// Builds the v2/v3 base string (without the secret) from flat parameters, where a nested
/// parameter arrives as `parent[sub]`. Lists (all-numeric sub-keys) keep index order.
pub fn canonical_string<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    enum Node<'a> {
        Value(&'a str),
        Nested(Vec<(&'a str, &'a str)>),
    }
    let mut by_parent: BTreeMap<&str, Node<'_>> = BTreeMap::new();
    for (key, value) in params {
        match split_nested(key) {
            Some((parent, sub)) => match by_parent.entry(parent).or_insert_with(|| Node::Nested(Vec::new())) {
                Node::Nested(children) => children.push((sub, value)),
                // `a=1&a[x]=2` cannot come from Paymentwall; keep the plain value, sign what we can.
                Node::Value(_) => {}
            },
            None => {
                by_parent.insert(key, Node::Value(value));
            }
        }
    }
    let mut out = String::new();
    for (parent, node) in by_parent {
        match node {
            Node::Value(value) => push_pair(&mut out, parent, None, value),
            Node::Nested(mut children) => {
                let is_list = children.iter().all(|(sub, _)| sub.parse::<u64>().is_ok());
                if is_list {
                    children.sort_by_key(|(sub, _)| sub.parse::<u64>().unwrap_or(u64::MAX));
                } else {
                    children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                }
                for (sub, value) in children {
                    push_pair(&mut out, parent, Some(sub), value);
                }
            }
        }
    }
    out
}

fn push_pair(out: &mut String, key: &str, sub: Option<&str>, value: &str) {
    out.push_str(key);
    if let Some(sub) = sub {
        out.push('[');
        out.push_str(sub);
        out.push(']');
    }
    out.push('=');
    out.push_str(value);
}

/// `history[membership]` -> `("history", "membership")`.
fn split_nested(key: &str) -> Option<(&str, &str)> {
    let open = key.find('[')?;
    let sub = key[open + 1..].strip_suffix(']')?;
    (open > 0 && !sub.contains('[')).then(|| (&key[..open], sub))
}

/// Hex digest of `base + secret` for v2 (MD5) and v3 (SHA-256); v1 callers pass their own base.
pub fn digest(version: SignVersion, base: &str, secret: &str) -> String {
    match version {
        SignVersion::V1 | SignVersion::V2 => {
            let mut h = Md5::new();
            h.update(base.as_bytes());
            h.update(secret.as_bytes());
            hex::encode(h.finalize())
        }
        SignVersion::V3 => {
            let mut h = Sha256::new();
            h.update(base.as_bytes());
            h.update(secret.as_bytes());
            hex::encode(h.finalize())
        }
    }
}

/// Signature of an outgoing request (widget URL, server APIs). `params` must not contain `sign`.
/// v1 is `md5(uid + secret)`.
pub fn sign_request<'a>(
    version: SignVersion,
    params: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    secret: &str,
) -> String {
    match version {
        SignVersion::V1 => {
            let uid = params.into_iter().find(|(k, _)| *k == "uid").map(|(_, v)| v).unwrap_or("");
            digest(SignVersion::V1, uid, secret)
        }
        v => digest(v, &canonical_string(params), secret),
    }
}

/// Fields a v1 pingback signs, in order. Which list applies depends on the project type, which
/// shows in the parameters: virtual currency pingbacks carry `currency`, cart ones `goodsid[0]`.
fn v1_pingback_fields(params: &[(String, String)]) -> &'static [&'static str] {
    let has = |name: &str| params.iter().any(|(k, _)| k == name);
    if has("currency") {
        &["uid", "currency", "type", "ref"]
    } else if params.iter().any(|(k, _)| k.starts_with("goodsid[")) {
        &["uid", "goodsid", "type", "ref"]
    } else {
        &["uid", "goodsid", "slength", "speriod", "type", "ref"]
    }
}

/// Expected signature of a received pingback. `params` are all received parameters; `sig` is skipped.
pub fn pingback_signature(version: SignVersion, params: &[(String, String)], secret: &str) -> String {
    match version {
        SignVersion::V1 => {
            let mut base = String::new();
            for field in v1_pingback_fields(params) {
                let value = params.iter().find(|(k, _)| k == field).map(|(_, v)| v.as_str()).unwrap_or("");
                push_pair(&mut base, field, None, value);
            }
            digest(SignVersion::V1, &base, secret)
        }
        v => {
            let signed = params.iter().filter(|(k, _)| k != "sig").map(|(k, v)| (k.as_str(), v.as_str()));
            digest(v, &canonical_string(signed), secret)
        }
    }
}

/// Constant-time comparison of a received signature with the expected one. Hex case is ignored.
pub fn signatures_match(expected: &str, received: &str) -> bool {
    let received = received.to_ascii_lowercase();
    expected.as_bytes().ct_eq(received.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c22f895840bf2391f67a40da64bfed26";
    const SECRET: &str = "a7408723eaf4bfa2e3ac49b3cb695046";
    const VC_SECRET: &str = "6274def95b105f1c92d341a8d3bc2e77";
    const CART_SECRET: &str = "51909b7b8b333e0f9de3c2cbad496a3c";

    fn w1(version: Option<&'static str>) -> Vec<(&'static str, &'static str)> {
        let mut p = vec![
            ("key", KEY),
            ("uid", "test_user"),
            ("widget", "p10"),
            ("amount", "9.99"),
            ("currencyCode", "USD"),
            ("ag_name", "Automatic Test Product Name"),
            ("ag_external_id", "product301"),
            ("ag_type", "fixed"),
            ("email", "user@hostname.com"),
        ];
        if let Some(v) = version {
            p.push(("sign_version", v));
        }
        p
    }

    fn w2(version: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("key", KEY),
            ("uid", "user40012"),
            ("widget", "pw"),
            ("amount", "10"),
            ("currencyCode", "USD"),
            ("ag_name", "Gold Membership"),
            ("ag_external_id", "gold_monthly"),
            ("ag_type", "subscription"),
            ("ag_period_length", "1"),
            ("ag_period_type", "month"),
            ("ag_recurring", "1"),
            ("email", "user@hostname.com"),
            ("timestamp", "1700000000"),
            ("ps", "all"),
            ("success_url", "https://example.com/thanks?ref=$ref"),
            ("history[registration_date]", "1600000000"),
            ("history[membership]", "gold"),
            ("sign_version", version),
        ]
    }

    fn w5(version: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("key", KEY),
            ("ref", "t1234"),
            ("uid", "user40012"),
            ("type", "1"),
            ("message", "cancelled order"),
            ("test_mode", "1"),
            ("sign_version", version),
        ]
    }

    #[test]
    fn widget_vector_w1_all_versions() {
        assert_eq!(sign_request(SignVersion::V1, w1(None), SECRET), "a0513cdee3f435c6d8b945bd1211ce53");
        assert_eq!(sign_request(SignVersion::V2, w1(Some("2")), SECRET), "d37c61f861c0241818e933ed5cfa3ec0");
        assert_eq!(
            sign_request(SignVersion::V3, w1(Some("3")), SECRET),
            "bf56fcaac6a2d41b3359f47d8bb5fef07f7668438e7f4f6bdab6d8285a4cf10b"
        );
    }

    #[test]
    fn widget_vector_w1_base_string() {
        assert_eq!(
            canonical_string(w1(Some("2"))),
            "ag_external_id=product301ag_name=Automatic Test Product Nameag_type=fixedamount=9.99\
             currencyCode=USDemail=user@hostname.comkey=c22f895840bf2391f67a40da64bfed26\
             sign_version=2uid=test_userwidget=p10"
        );
    }

    #[test]
    fn widget_vector_w2_nested_history() {
        assert_eq!(
            sign_request(SignVersion::V3, w2("3"), SECRET),
            "b7390ebf61a6d160a563b54a8de8b2f4aabd75331105530004f67590f9764e4a"
        );
        assert_eq!(sign_request(SignVersion::V2, w2("2"), SECRET), "3ed3e7d6dde91b9c58f0776ceef0d36d");
    }

    #[test]
    fn payment_systems_vector_w4() {
        let p = [("key", KEY), ("country_code", "KR"), ("sign_version", "2")];
        assert_eq!(sign_request(SignVersion::V2, p, SECRET), "82791129d0cd8b075402d292c319cff8");
    }

    #[test]
    fn cancellation_ticket_vector_w5() {
        assert_eq!(sign_request(SignVersion::V2, w5("2"), SECRET), "50b1e70d451299b9d8f31e3bd5b023ba");
        assert_eq!(
            sign_request(SignVersion::V3, w5("3"), SECRET),
            "5c08aaa909d808089023809e950997a651d32078652bf9aa89fa5080f0e2ae1b"
        );
    }

    #[test]
    fn empty_values_are_kept_vector_w6() {
        let p = [("a", "1"), ("b", "0"), ("d", ""), ("e", "0"), ("sign_version", "2")];
        assert_eq!(sign_request(SignVersion::V2, p, SECRET), "782a00185e95dd977f926754b03569bd");
    }

    #[test]
    fn a_changed_or_added_request_parameter_changes_the_signature() {
        let good = sign_request(SignVersion::V3, w1(Some("3")), SECRET);
        let mut changed = w1(Some("3"));
        changed[3] = ("amount", "9.98");
        assert_ne!(sign_request(SignVersion::V3, changed, SECRET), good);
        let mut added = w1(Some("3"));
        added.push(("ps", "all"));
        assert_ne!(sign_request(SignVersion::V3, added, SECRET), good);
    }

    #[test]
    fn lists_keep_index_order_not_byte_order() {
        let p = [("g[10]", "c"), ("g[2]", "b"), ("g[0]", "a")];
        assert_eq!(canonical_string(p), "g[0]=ag[2]=bg[10]=c");
    }

    fn query(q: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    /// (secret, query without sig, version, expected sig) from docs/paymentwall.md section 3.
    const PINGBACK_VECTORS: &[(&str, &str, SignVersion, &str)] = &[
        (
            SECRET,
            "uid=test_user&goodsid=test_product&slength=5&speriod=month&type=0&ref=t123&is_test=1&sign_version=2",
            SignVersion::V2,
            "754cff93c0eb859f6054bef143ad253c",
        ),
        (
            SECRET,
            "uid=test_user&goodsid=test_product&slength=-5&speriod=month&type=2&ref=t123&is_test=1&reason=9&sign_version=3",
            SignVersion::V3,
            "2f67209c3e581313a70de9425efef49f35a74c0cdb7f93051b47e3c097011a71",
        ),
        (
            SECRET,
            "uid=test_user&goodsid=test_product&slength=-5&speriod=month&type=2&ref=t123&is_test=1&reason=9",
            SignVersion::V1,
            "e7b2ff07bc0734c83ee14f32552b1c88",
        ),
        (
            VC_SECRET,
            "uid=test_user&currency=1000&type=0&ref=t555&is_test=1",
            SignVersion::V1,
            "efaacb488ab8ee19321ad513b6908574",
        ),
        (
            VC_SECRET,
            "uid=test_user&currency=1000&type=0&ref=t555&is_test=1&sign_version=2",
            SignVersion::V2,
            "5057977f881bed13592bec928f062b31",
        ),
        (
            VC_SECRET,
            "uid=test_user&currency=1000&type=0&ref=t555&is_test=1&sign_version=3",
            SignVersion::V3,
            "a2932c360010e613166ae95ede5a3fa45bfcac10e1dd93715d21b00d684eb0fb",
        ),
        (
            CART_SECRET,
            "uid=testuser&type=0&ref=testref&is_test=1&goodsid[0]=testid&sign_version=2",
            SignVersion::V2,
            "401378d3e978e223c5f5016386ff1e5c",
        ),
    ];

    #[test]
    fn pingback_vectors_p1_to_p7() {
        for (i, (secret, q, version, expected)) in PINGBACK_VECTORS.iter().enumerate() {
            let mut params = query(q);
            params.push(("sig".into(), (*expected).into()));
            let computed = pingback_signature(*version, &params, secret);
            assert_eq!(&computed, expected, "P{}", i + 1);
            assert!(signatures_match(&computed, expected), "P{}", i + 1);
        }
    }

    #[test]
    fn pingback_negative_cases_fail() {
        for (i, (secret, q, version, expected)) in PINGBACK_VECTORS.iter().enumerate() {
            let params = query(q);
            let computed = pingback_signature(*version, &params, secret);
            // a character appended to sig
            assert!(!signatures_match(&computed, &format!("{expected}0")), "P{} appended", i + 1);
            // a changed parameter (ref is signed by every version)
            let changed: Vec<_> = params
                .iter()
                .map(|(k, v)| if k == "ref" { (k.clone(), format!("{v}x")) } else { (k.clone(), v.clone()) })
                .collect();
            assert!(!signatures_match(&pingback_signature(*version, &changed, secret), expected), "P{} changed", i + 1);
            // a parameter added (v1 signs a fixed list, so an added field there is the signed `type`)
            let mut added = params.clone();
            if *version == SignVersion::V1 {
                added.retain(|(k, _)| k != "type");
                added.push(("type".into(), "12".into()));
            } else {
                added.push(("extra".into(), "1".into()));
            }
            assert!(!signatures_match(&pingback_signature(*version, &added, secret), expected), "P{} added", i + 1);
            // the wrong secret
            assert!(!signatures_match(&pingback_signature(*version, &params, "wrong"), expected), "P{} secret", i + 1);
        }
    }

    #[test]
    fn v1_does_not_sign_is_test_or_reason() {
        let (secret, q, version, expected) = PINGBACK_VECTORS[2];
        let mut params = query(q);
        params.retain(|(k, _)| k != "is_test" && k != "reason");
        assert_eq!(pingback_signature(version, &params, secret), expected);
    }
}
