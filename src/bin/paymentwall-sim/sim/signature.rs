//! The simulator's own Paymentwall signatures. Written apart from `providers::paymentwall` on
//! purpose: if both shared code, a bug there would sign and verify consistently and hide itself.
//! Both are held to the vectors of docs/paymentwall.md.

use md5::{Digest as _, Md5};
use sha2::Sha256;

/// Sorted `key=value` pairs. Keys like `history[x]` are grouped under `history`, sorted by sub-key
/// (numerically when every sub-key is a number, which is how lists are sent).
fn base_string(pairs: &[(String, String)]) -> String {
    let parent_of = |key: &str| key.split_once('[').map_or(key.to_owned(), |(p, _)| p.to_owned());
    let sub_of = |key: &str| key.split_once('[').map(|(_, rest)| rest.trim_end_matches(']').to_owned());
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort_by(|a, b| {
        let (pa, pb) = (parent_of(&a.0), parent_of(&b.0));
        pa.as_bytes().cmp(pb.as_bytes()).then_with(|| match (sub_of(&a.0), sub_of(&b.0)) {
            (Some(sa), Some(sb)) => match (sa.parse::<u64>(), sb.parse::<u64>()) {
                (Ok(na), Ok(nb)) => na.cmp(&nb),
                _ => sa.as_bytes().cmp(sb.as_bytes()),
            },
            _ => std::cmp::Ordering::Equal,
        })
    });
    sorted.into_iter().fold(String::new(), |mut acc, (k, v)| {
        acc += k;
        acc += "=";
        acc += v;
        acc
    })
}

fn hash_hex(version: u8, input: &str) -> String {
    let bytes: Vec<u8> =
        if version == 3 { Sha256::digest(input.as_bytes()).to_vec() } else { Md5::digest(input.as_bytes()).to_vec() };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Signature of a widget / API request: everything but `sign`. Version 1 is `md5(uid + secret)`.
pub fn request_sign(version: u8, params: &[(String, String)], secret: &str) -> String {
    if version == 1 {
        let uid = params.iter().find(|(k, _)| k == "uid").map_or("", |(_, v)| v.as_str());
        return hash_hex(1, &format!("{uid}{secret}"));
    }
    let signed: Vec<(String, String)> = params.iter().filter(|(k, _)| k != "sign").cloned().collect();
    hash_hex(version, &(base_string(&signed) + secret))
}

/// Signature of a pingback: everything but `sig` (v2/v3), or the fixed v1 list of a Digital Goods project.
pub fn pingback_sig(version: u8, params: &[(String, String)], secret: &str) -> String {
    if version == 1 {
        let value = |name: &str| params.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
        let base: String = ["uid", "goodsid", "slength", "speriod", "type", "ref"]
            .iter()
            .map(|name| format!("{name}={}", value(name)))
            .collect();
        return hash_hex(1, &(base + secret));
    }
    let signed: Vec<(String, String)> = params.iter().filter(|(k, _)| k != "sig").cloned().collect();
    hash_hex(version, &(base_string(&signed) + secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a7408723eaf4bfa2e3ac49b3cb695046";

    fn pairs(q: &str) -> Vec<(String, String)> {
        q.split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    #[test]
    fn widget_vectors() {
        let w1 = "key=c22f895840bf2391f67a40da64bfed26&uid=test_user&widget=p10&amount=9.99&currencyCode=USD&\
                  ag_name=Automatic Test Product Name&ag_external_id=product301&ag_type=fixed&email=user@hostname.com";
        assert_eq!(request_sign(1, &pairs(w1), SECRET), "a0513cdee3f435c6d8b945bd1211ce53");
        assert_eq!(
            request_sign(2, &pairs(&format!("{w1}&sign_version=2")), SECRET),
            "d37c61f861c0241818e933ed5cfa3ec0"
        );
        assert_eq!(
            request_sign(3, &pairs(&format!("{w1}&sign_version=3")), SECRET),
            "bf56fcaac6a2d41b3359f47d8bb5fef07f7668438e7f4f6bdab6d8285a4cf10b"
        );
        let w2 = "key=c22f895840bf2391f67a40da64bfed26&uid=user40012&widget=pw&amount=10&currencyCode=USD&\
                  ag_name=Gold Membership&ag_external_id=gold_monthly&ag_type=subscription&ag_period_length=1&\
                  ag_period_type=month&ag_recurring=1&email=user@hostname.com&timestamp=1700000000&ps=all&\
                  success_url=https://example.com/thanks?ref=$ref&history[registration_date]=1600000000&\
                  history[membership]=gold";
        assert_eq!(
            request_sign(3, &pairs(&format!("{w2}&sign_version=3")), SECRET),
            "b7390ebf61a6d160a563b54a8de8b2f4aabd75331105530004f67590f9764e4a"
        );
        assert_eq!(
            request_sign(2, &pairs(&format!("{w2}&sign_version=2")), SECRET),
            "3ed3e7d6dde91b9c58f0776ceef0d36d"
        );
        let w4 = "key=c22f895840bf2391f67a40da64bfed26&country_code=KR&sign_version=2";
        assert_eq!(request_sign(2, &pairs(w4), SECRET), "82791129d0cd8b075402d292c319cff8");
        let w5 =
            "key=c22f895840bf2391f67a40da64bfed26&ref=t1234&uid=user40012&type=1&message=cancelled order&test_mode=1";
        assert_eq!(
            request_sign(2, &pairs(&format!("{w5}&sign_version=2")), SECRET),
            "50b1e70d451299b9d8f31e3bd5b023ba"
        );
        assert_eq!(
            request_sign(3, &pairs(&format!("{w5}&sign_version=3")), SECRET),
            "5c08aaa909d808089023809e950997a651d32078652bf9aa89fa5080f0e2ae1b"
        );
        assert_eq!(
            request_sign(2, &pairs("a=1&b=0&d=&e=0&sign_version=2"), SECRET),
            "782a00185e95dd977f926754b03569bd"
        );
    }

    #[test]
    fn pingback_vectors() {
        let p1 = "uid=test_user&goodsid=test_product&slength=5&speriod=month&type=0&ref=t123&is_test=1&sign_version=2";
        assert_eq!(pingback_sig(2, &pairs(p1), SECRET), "754cff93c0eb859f6054bef143ad253c");
        let p2 = "uid=test_user&goodsid=test_product&slength=-5&speriod=month&type=2&ref=t123&is_test=1&reason=9&sign_version=3";
        assert_eq!(
            pingback_sig(3, &pairs(p2), SECRET),
            "2f67209c3e581313a70de9425efef49f35a74c0cdb7f93051b47e3c097011a71"
        );
        let p3 = "uid=test_user&goodsid=test_product&slength=-5&speriod=month&type=2&ref=t123&is_test=1&reason=9";
        assert_eq!(pingback_sig(1, &pairs(p3), SECRET), "e7b2ff07bc0734c83ee14f32552b1c88");
        let vc = "6274def95b105f1c92d341a8d3bc2e77";
        let p5 = "uid=test_user&currency=1000&type=0&ref=t555&is_test=1&sign_version=2";
        assert_eq!(pingback_sig(2, &pairs(p5), vc), "5057977f881bed13592bec928f062b31");
        let p6 = "uid=test_user&currency=1000&type=0&ref=t555&is_test=1&sign_version=3";
        assert_eq!(pingback_sig(3, &pairs(p6), vc), "a2932c360010e613166ae95ede5a3fa45bfcac10e1dd93715d21b00d684eb0fb");
        let p7 = "uid=testuser&type=0&ref=testref&is_test=1&goodsid[0]=testid&sign_version=2";
        assert_eq!(pingback_sig(2, &pairs(p7), "51909b7b8b333e0f9de3c2cbad496a3c"), "401378d3e978e223c5f5016386ff1e5c");
    }
}
