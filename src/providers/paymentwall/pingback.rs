//! Pingbacks: Paymentwall's signed `GET` callbacks. Parsing is strict (a repeated or malformed
//! parameter is refused) because everything here came from the internet.

use super::signature::{SignVersion, pingback_signature, signatures_match};
use crate::{
    payments::provider::{PaymentOutcome, ProviderEvent, ReversalKind, ReversalNotice, SubscriptionEnd},
    validation::{self, Rule},
};

/// A query longer than this is not a pingback.
pub const MAX_QUERY_LEN: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("missing parameter {0}")]
    Missing(&'static str),
    #[error("parameter {0} is repeated")]
    Repeated(String),
    #[error("parameter {field}: {problem}")]
    Invalid { field: &'static str, problem: &'static str },
    #[error("query is longer than {MAX_QUERY_LEN} bytes")]
    TooLong,
    /// A parameter (or its name) breaks its charset or length rule; `field` is the parameter's
    /// name, cut short and escaped when the name itself is the problem.
    #[error("parameter {field}: {problem}")]
    Refused { field: String, problem: String },
}

/// Our payment id, echoed back as `goodsid`.
const GOODSID: Rule = validation::ID;

#[derive(Debug, Clone)]
pub struct Pingback {
    /// Every received parameter, decoded, in arrival order; what the signature covers.
    params: Vec<(String, String)>,
    pub kind: u32,
    pub reference: String,
    /// Our payment id (sent as `ag_external_id`), for one-time and subscription products.
    pub goodsid: Option<String>,
    pub is_test: bool,
    pub sign_version: SignVersion,
    /// The event the pingback reports, including the reason code of a type 2.
    pub event: ProviderEvent,
    /// The project's UNIQUE_REF custom parameter, when it sends one (tells apart two reversals of
    /// one ref); empty otherwise.
    pub unique_ref: String,
    sig: String,
}

/// A type 2 pingback's reason code (docs/paymentwall.md), in paygate's terms.
pub fn reversal(reason: u32) -> ReversalNotice {
    let kind = match reason {
        9 => ReversalKind::FullRefund,
        10 => ReversalKind::PartialRefund,
        1 => ReversalKind::Chargeback,
        _ => ReversalKind::Other,
    };
    let description = match reason {
        1 => "chargeback",
        2 => "credit card fraud",
        3 => "other fraud",
        4 => "bad data entry",
        5 => "fake / proxy user",
        6 => "rejected by advertiser",
        7 => "duplicate conversion",
        8 => "goodwill credit taken back",
        9 => "cancelled order (refund)",
        10 => "partially reversed transaction",
        _ => "reversed by the provider",
    };
    ReversalNotice { kind, provider_reason: Some(i64::from(reason)), description }
}

impl Pingback {
    pub fn parse(query: &str) -> Result<Self, ParseError> {
        if query.len() > MAX_QUERY_LEN {
            return Err(ParseError::TooLong);
        }
        // A query arrives percent-encoded; raw bytes outside visible ASCII were never sent by a
        // provider, and the raw query is what gets stored.
        if !query.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ParseError::Refused { field: "query".into(), problem: "must be percent-encoded ASCII".into() });
        }
        let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        for (i, (key, value)) in params.iter().enumerate() {
            if let Some(problem) = validation::problem(key, validation::PARAMETER_NAME) {
                let field = format!("name {}", validation::loggable(key, 32));
                return Err(ParseError::Refused { field, problem });
            }
            if value.chars().any(char::is_control) {
                let problem = "must not contain control characters".into();
                return Err(ParseError::Refused { field: key.clone(), problem });
            }
            if params[..i].iter().any(|(earlier, _)| earlier == key) {
                return Err(ParseError::Repeated(key.clone()));
            }
        }
        let checked = |name: &'static str, value: &str, rule: Rule| match validation::problem(value, rule) {
            Some(problem) => Err(ParseError::Refused { field: name.into(), problem }),
            None => Ok(()),
        };
        let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());

        let kind = get("type").ok_or(ParseError::Missing("type"))?;
        let kind: u32 = kind.parse().map_err(|_| ParseError::Invalid { field: "type", problem: "not a number" })?;
        if !matches!(kind, 0 | 1 | 2 | 12 | 13 | 14 | 200..=203) {
            return Err(ParseError::Invalid { field: "type", problem: "unknown pingback type" });
        }
        let reference = get("ref").filter(|r| !r.is_empty()).ok_or(ParseError::Missing("ref"))?.to_owned();
        checked("ref", &reference, validation::PROVIDER_REF)?;
        let sig = get("sig").filter(|s| !s.is_empty()).ok_or(ParseError::Missing("sig"))?.to_owned();
        let sign_version = match get("sign_version") {
            None | Some("") => SignVersion::V1,
            Some(v) => v
                .parse()
                .ok()
                .and_then(SignVersion::from_number)
                .ok_or(ParseError::Invalid { field: "sign_version", problem: "must be 1, 2 or 3" })?,
        };
        let is_test = match get("is_test") {
            None | Some("") | Some("0") => false,
            Some("1") => true,
            Some(_) => return Err(ParseError::Invalid { field: "is_test", problem: "must be 0 or 1" }),
        };
        let goodsid = get("goodsid").filter(|g| !g.is_empty()).map(str::to_owned);
        if let Some(goodsid) = &goodsid {
            checked("goodsid", goodsid, GOODSID)?;
        }
        let event = match kind {
            0 | 1 => ProviderEvent::Payment(PaymentOutcome::Completed),
            200 => ProviderEvent::Payment(PaymentOutcome::ReviewStarted),
            201 => ProviderEvent::Payment(PaymentOutcome::ReviewAccepted),
            202 | 203 => ProviderEvent::Payment(PaymentOutcome::Declined),
            2 => {
                let reason = get("reason").filter(|r| !r.is_empty()).ok_or(ParseError::Missing("reason"))?;
                let reason =
                    reason.parse().map_err(|_| ParseError::Invalid { field: "reason", problem: "not a number" })?;
                ProviderEvent::Reversal(reversal(reason))
            }
            12 => ProviderEvent::SubscriptionEnded(SubscriptionEnd::Cancelled),
            13 => ProviderEvent::SubscriptionEnded(SubscriptionEnd::Expired),
            _ => ProviderEvent::SubscriptionEnded(SubscriptionEnd::PaymentFailed),
        };
        let unique_ref = get("UNIQUE_REF").unwrap_or_default().to_owned();
        if !unique_ref.is_empty() {
            checked("UNIQUE_REF", &unique_ref, validation::PROVIDER_REF)?;
        }
        Ok(Self { params, kind, reference, goodsid, is_test, sign_version, event, unique_ref, sig })
    }

    /// Checks `sig` against the secret, in constant time.
    pub fn verify(&self, secret: &str) -> bool {
        signatures_match(&pingback_signature(self.sign_version, &self.params, secret), &self.sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a7408723eaf4bfa2e3ac49b3cb695046";
    const P1: &str =
        "uid=test_user&goodsid=test_product&slength=5&speriod=month&type=0&ref=t123&is_test=1&sign_version=2";

    #[test]
    fn parses_and_verifies_vector_p1() {
        let p = Pingback::parse(&format!("{P1}&sig=754cff93c0eb859f6054bef143ad253c")).expect("parses");
        assert_eq!(p.kind, 0);
        assert_eq!(p.reference, "t123");
        assert_eq!(p.goodsid.as_deref(), Some("test_product"));
        assert!(p.is_test);
        assert_eq!(p.sign_version, SignVersion::V2);
        assert!(p.verify(SECRET));
        assert!(!p.verify("another secret"));
        assert_eq!(p.event, ProviderEvent::Payment(PaymentOutcome::Completed));
    }

    #[test]
    fn tampering_after_signing_is_detected() {
        let sig = "754cff93c0eb859f6054bef143ad253c";
        for query in [
            format!("{P1}&sig={sig}0"),
            format!("{}&sig={sig}", P1.replace("ref=t123", "ref=t124")),
            format!("{P1}&extra=1&sig={sig}"),
            format!("{}&sig={sig}", P1.replace("is_test=1", "is_test=0")),
        ] {
            let p = Pingback::parse(&query).expect("parses");
            assert!(!p.verify(SECRET), "{query}");
        }
    }

    #[test]
    fn malformed_pingbacks_are_refused_with_the_reason() {
        assert_eq!(Pingback::parse("ref=1&sig=a").unwrap_err(), ParseError::Missing("type"));
        assert_eq!(Pingback::parse("type=0&sig=a").unwrap_err(), ParseError::Missing("ref"));
        assert_eq!(Pingback::parse("type=0&ref=1").unwrap_err(), ParseError::Missing("sig"));
        assert_eq!(
            Pingback::parse("type=zero&ref=1&sig=a").unwrap_err(),
            ParseError::Invalid { field: "type", problem: "not a number" }
        );
        assert_eq!(
            Pingback::parse("type=7&ref=1&sig=a").unwrap_err(),
            ParseError::Invalid { field: "type", problem: "unknown pingback type" }
        );
        assert_eq!(Pingback::parse("type=0&ref=1&ref=2&sig=a").unwrap_err(), ParseError::Repeated("ref".into()));
        assert_eq!(
            Pingback::parse("type=0&ref=1&sig=a&sign_version=4").unwrap_err(),
            ParseError::Invalid { field: "sign_version", problem: "must be 1, 2 or 3" }
        );
        assert_eq!(Pingback::parse(&"a".repeat(MAX_QUERY_LEN + 1)).unwrap_err(), ParseError::TooLong);
        // Garbage never panics.
        for junk in ["", "&&&", "%ZZ=%", "type=0&ref=%FF%FE&sig=%00", "=&=&type="] {
            let _ = Pingback::parse(junk);
        }
    }

    #[test]
    fn types_map_to_events() {
        let event = |q: &str| Pingback::parse(&format!("{q}&ref=r&sig=s")).expect("parses").event;
        assert_eq!(event("type=1"), ProviderEvent::Payment(PaymentOutcome::Completed));
        assert_eq!(event("type=200"), ProviderEvent::Payment(PaymentOutcome::ReviewStarted));
        assert_eq!(event("type=201"), ProviderEvent::Payment(PaymentOutcome::ReviewAccepted));
        assert_eq!(event("type=202"), ProviderEvent::Payment(PaymentOutcome::Declined));
        assert_eq!(event("type=203"), ProviderEvent::Payment(PaymentOutcome::Declined));
        assert_eq!(event("type=2&reason=9"), ProviderEvent::Reversal(reversal(9)));
        assert_eq!(reversal(9).kind, ReversalKind::FullRefund);
        assert_eq!(reversal(10).kind, ReversalKind::PartialRefund);
        assert_eq!(reversal(1).kind, ReversalKind::Chargeback);
        assert_eq!(reversal(2).kind, ReversalKind::Other);
        assert_eq!(reversal(2).description, "credit card fraud");
        assert_eq!(event("type=2&reason=1"), ProviderEvent::Reversal(reversal(1)));
        assert_eq!(event("type=12"), ProviderEvent::SubscriptionEnded(SubscriptionEnd::Cancelled));
        assert_eq!(event("type=13"), ProviderEvent::SubscriptionEnded(SubscriptionEnd::Expired));
        assert_eq!(event("type=14"), ProviderEvent::SubscriptionEnded(SubscriptionEnd::PaymentFailed));
        assert_eq!(Pingback::parse("type=2&ref=r&sig=s").unwrap_err(), ParseError::Missing("reason"));
    }

    /// Query text as the internet may send it: raw, percent-escapes, `&`/`=` structure.
    fn hostile_query() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let value = prop_oneof![any::<String>(), "(%[0-9A-Fa-f]{2}|[a-z0-9_.-]){0,40}", "[\\x00-\\x1f]{1,3}"];
        let pair = (
            prop_oneof![
                Just("type".to_owned()),
                Just("ref".to_owned()),
                Just("goodsid".to_owned()),
                Just("UNIQUE_REF".to_owned()),
                Just("sig".to_owned()),
                any::<String>()
            ],
            value,
        );
        prop_oneof![
            any::<String>(),
            proptest::collection::vec(pair, 0..12).prop_map(|pairs| {
                let mut query = form_urlencoded::Serializer::new(String::new());
                for (k, v) in &pairs {
                    query.append_pair(k, v);
                }
                query.finish()
            }),
        ]
    }

    proptest::proptest! {
        /// Whatever arrives: no panic; a refusal names what it refuses; what is accepted is safe
        /// to store and to look up (no control characters, within the identifier rules).
        #[test]
        fn any_query_is_parsed_or_refused_by_name(query in hostile_query()) {
            match Pingback::parse(&query) {
                Err(e) => {
                    let named = match &e {
                        ParseError::Missing(f) | ParseError::Invalid { field: f, .. } => !f.is_empty(),
                        ParseError::Repeated(f) | ParseError::Refused { field: f, .. } => !f.is_empty(),
                        ParseError::TooLong => true,
                    };
                    proptest::prop_assert!(named, "{e:?}");
                    proptest::prop_assert!(e.to_string().len() < 300, "the answer line stays short: {e}");
                }
                Ok(p) => {
                    proptest::prop_assert!(validation::problem(&p.reference, validation::PROVIDER_REF).is_none());
                    if let Some(goodsid) = &p.goodsid {
                        proptest::prop_assert!(validation::problem(goodsid, GOODSID).is_none());
                    }
                    proptest::prop_assert!(!p.unique_ref.chars().any(char::is_control));
                    proptest::prop_assert!(query.bytes().all(|b| b.is_ascii_graphic()));
                }
            }
        }
    }
}
