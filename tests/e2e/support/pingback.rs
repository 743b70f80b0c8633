//! A Paymentwall pingback as the tests send it, built parameter by parameter in place of a
//! hand-written list for `signed_pingback_query`.

use std::fmt::Display;

use super::{Paygate, SECRET_KEY, http_client, signed_pingback_query};

/// A pingback, signed by the simulator's independent signer (`signed_pingback_query`).
///
/// Parameters go out in the order Paymentwall writes them (docs' vectors P1, P2): `uid`,
/// `goodsid`, `slength`, `speriod`, `type`, `ref`, `is_test`, `reason`, then custom parameters in
/// the order given, then `sign_version` and `sig`. A parameter that was not set is not sent.
/// Unless told otherwise: type 0 (payment completed), signature version 3.
///
/// ```ignore
/// Pingback::new(&payment_id).uid("user-40012").one_time().reference("b1").test().signed(SECRET_KEY)
/// // uid=user-40012&goodsid=pay_..&slength=&speriod=&type=0&ref=b1&is_test=1&sign_version=3&sig=..
/// ```
#[derive(Debug, Clone)]
pub struct Pingback {
    uid: Option<String>,
    goodsid: String,
    period: Option<(String, String)>,
    kind: String,
    reference: Option<String>,
    test: bool,
    reason: Option<String>,
    custom: Vec<(String, String)>,
    version: u8,
}

impl Pingback {
    /// A type 0 pingback for `goodsid` (the payment id paygate sent as `ag_external_id`).
    pub fn new(goodsid: &str) -> Self {
        Self {
            uid: None,
            goodsid: goodsid.to_owned(),
            period: None,
            kind: "0".to_owned(),
            reference: None,
            test: false,
            reason: None,
            custom: Vec::new(),
            version: 3,
        }
    }

    /// `uid`: the buyer's id at the merchant.
    pub fn uid(mut self, uid: &str) -> Self {
        self.uid = Some(uid.to_owned());
        self
    }

    /// `slength` and `speriod`.
    pub fn period(mut self, slength: &str, speriod: &str) -> Self {
        self.period = Some((slength.to_owned(), speriod.to_owned()));
        self
    }

    /// `slength=` and `speriod=`, empty, as Paymentwall sends them for a one-time payment.
    pub fn one_time(self) -> Self {
        self.period("", "")
    }

    /// `type` (0 unless set).
    pub fn kind(mut self, kind: impl Display) -> Self {
        self.kind = kind.to_string();
        self
    }

    /// `ref`: Paymentwall's transaction id.
    pub fn reference(mut self, reference: &str) -> Self {
        self.reference = Some(reference.to_owned());
        self
    }

    /// `is_test=1`: a test payment.
    pub fn test(mut self) -> Self {
        self.test = true;
        self
    }

    /// `reason` (type 2 only: 1 chargeback, 9 refund, 10 partial reversal, ...).
    pub fn reason(mut self, reason: u32) -> Self {
        self.reason = Some(reason.to_string());
        self
    }

    /// A custom pingback parameter (e.g. `UNIQUE_REF`), after the standard ones.
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.custom.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `sign_version` (3 unless set).
    pub fn version(mut self, version: u8) -> Self {
        self.version = version;
        self
    }

    /// The query string, signed with `secret`.
    pub fn signed(&self, secret: &str) -> String {
        let mut params: Vec<(&str, &str)> = Vec::new();
        if let Some(uid) = &self.uid {
            params.push(("uid", uid));
        }
        params.push(("goodsid", &self.goodsid));
        if let Some((slength, speriod)) = &self.period {
            params.push(("slength", slength));
            params.push(("speriod", speriod));
        }
        params.push(("type", &self.kind));
        if let Some(reference) = &self.reference {
            params.push(("ref", reference));
        }
        if self.test {
            params.push(("is_test", "1"));
        }
        if let Some(reason) = &self.reason {
            params.push(("reason", reason));
        }
        params.extend(self.custom.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        signed_pingback_query(&params, secret, self.version)
    }

    /// Signed with `SECRET_KEY` (the secret of `channel_request`'s channels) and sent as
    /// Paymentwall sends it, GET `/pingback/paymentwall/{channel_key}` on `gate`; the answer's body.
    pub async fn send(&self, gate: &Paygate, channel_key: &str) -> String {
        let url =
            format!("{}?{}", gate.http_url(&format!("/pingback/paymentwall/{channel_key}")), self.signed(SECRET_KEY));
        http_client().get(url).send().await.unwrap().text().await.unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The docs' pingback vectors P1 and P2 (docs/paymentwall.md), query and signature.
    #[test]
    fn the_builder_writes_the_pingbacks_of_the_vectors() {
        let p1 = Pingback::new("test_product").uid("test_user").period("5", "month").reference("t123").test();
        assert_eq!(
            p1.version(2).signed(SECRET_KEY),
            "uid=test_user&goodsid=test_product&slength=5&speriod=month&type=0&ref=t123&is_test=1&sign_version=2\
             &sig=754cff93c0eb859f6054bef143ad253c"
        );
        let p2 = Pingback::new("test_product")
            .uid("test_user")
            .period("-5", "month")
            .kind(2)
            .reference("t123")
            .test()
            .reason(9);
        assert_eq!(
            p2.signed(SECRET_KEY),
            "uid=test_user&goodsid=test_product&slength=-5&speriod=month&type=2&ref=t123&is_test=1&reason=9\
             &sign_version=3&sig=2f67209c3e581313a70de9425efef49f35a74c0cdb7f93051b47e3c097011a71"
        );
    }

    /// Each shape of the hand-written lists the builder replaced gives the same query, byte for byte.
    #[test]
    fn the_builder_writes_what_the_hand_written_lists_did() {
        let shapes: [(Pingback, &[(&str, &str)]); 4] = [
            (
                Pingback::new("pay_1").uid("user-40012").one_time().reference("b1").test(),
                &[
                    ("uid", "user-40012"),
                    ("goodsid", "pay_1"),
                    ("slength", ""),
                    ("speriod", ""),
                    ("type", "0"),
                    ("ref", "b1"),
                    ("is_test", "1"),
                ],
            ),
            (
                Pingback::new("pay_1").uid("user-40012").kind("200").reference("b1").test(),
                &[("uid", "user-40012"), ("goodsid", "pay_1"), ("type", "200"), ("ref", "b1"), ("is_test", "1")],
            ),
            (
                Pingback::new("pay_x").uid("u").one_time().reference("b1"),
                &[("uid", "u"), ("goodsid", "pay_x"), ("slength", ""), ("speriod", ""), ("type", "0"), ("ref", "b1")],
            ),
            (Pingback::new("pay_x").reference("b1"), &[("goodsid", "pay_x"), ("type", "0"), ("ref", "b1")]),
        ];
        for (built, list) in shapes {
            for secret in [SECRET_KEY, "another secret"] {
                assert_eq!(built.signed(secret), signed_pingback_query(list, secret, 3), "{list:?}");
            }
        }
    }
}
