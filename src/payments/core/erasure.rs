//! Erasure (EraseCustomer): what of a buyer paygate forgets when the merchant asks, and what it
//! keeps so the books still add up. A payment keeps its ids, amounts, currency, statuses, refunds,
//! provider ref, order (merchant_uid, order_name) and times; it forgets the buyer's uid and
//! e-mail, the custom parameters the merchant passed for the buyer, and every URL (the signed
//! hosted-page URL carries the uid and e-mail; the return URLs may carry the merchant's own ids
//! for the buyer). Pure: the flow applies these to every copy of a payment paygate keeps.

use serde_json::Value;

use super::Payment;

/// The fields of a payment (and of its JSON copies: event snapshots, webhook bodies) that are the
/// buyer's.
pub const PERSONAL_FIELDS: [&str; 6] =
    ["customer_uid", "customer_email", "custom_params", "redirect_url", "success_url", "failure_url"];

/// The payment without the buyer's data, at the next version; `None` when there is nothing left to
/// forget (erased before), so erasing again changes nothing.
pub fn erase(payment: &Payment, now: i64) -> Option<Payment> {
    if !holds_personal_data(payment) {
        return None;
    }
    let mut erased = payment.next_version(now);
    erased.customer_uid.clear();
    erased.customer_email = Default::default();
    erased.custom_params.clear();
    erased.redirect_url.clear();
    erased.success_url.clear();
    erased.failure_url.clear();
    Some(erased)
}

pub fn holds_personal_data(p: &Payment) -> bool {
    !(p.customer_uid.is_empty()
        && p.customer_email.is_empty()
        && p.custom_params.is_empty()
        && p.redirect_url.is_empty()
        && p.success_url.is_empty()
        && p.failure_url.is_empty())
}

/// Blanks the buyer's fields of every payment inside `value` (an object with a `customer_uid` is
/// one; a webhook body holds its payment under `data`). True if anything changed.
pub fn erase_in_json(value: &mut Value) -> bool {
    match value {
        Value::Object(map) => {
            let mut changed = false;
            if map.contains_key("customer_uid") {
                for field in PERSONAL_FIELDS {
                    let blank = if field == "custom_params" { Value::Object(Default::default()) } else { "".into() };
                    if let Some(v) = map.get_mut(field)
                        && *v != blank
                    {
                        *v = blank;
                        changed = true;
                    }
                }
            }
            for v in map.values_mut() {
                changed |= erase_in_json(v);
            }
            changed
        }
        Value::Array(items) => items.iter_mut().fold(false, |changed, v| erase_in_json(v) | changed),
        _ => false,
    }
}

/// The parameters of a raw Paymentwall pingback that say what happened to which transaction; all
/// others (`uid`, the merchant's custom parameters, an e-mail) are the buyer's or may be.
const PINGBACK_KEPT: [&str; 11] = [
    "goodsid",
    "slength",
    "speriod",
    "type",
    "ref",
    "is_test",
    "reason",
    "sign_version",
    "currency",
    "UNIQUE_REF",
    "sig",
];

/// A raw pingback query with only the parameters in `PINGBACK_KEPT` (a cart's `goodsid[0]` too);
/// the rest are dropped, names and values. Its signature no longer verifies: it was checked on
/// arrival, and the row is a record of what came.
pub fn erase_in_pingback_query(query: &str) -> String {
    let kept = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| PINGBACK_KEPT.contains(&name.split('[').next().unwrap_or_default()))
        .collect::<Vec<_>>();
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(kept).finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        payments::{PaymentStatus, fixtures::payment},
        personal::Email,
    };

    fn bought() -> Payment {
        let mut p = payment(PaymentStatus::Paid, 999, 100, 0);
        p.customer_uid = "buyer-7".into();
        p.customer_email = Email::new("b@example.com");
        p.custom_params.insert("loyalty".into(), "7".into());
        p.redirect_url = "https://pw/widget?uid=buyer-7&email=b%40example.com".into();
        p.success_url = "https://shop/thanks?u=buyer-7".into();
        p
    }

    #[test]
    fn erasing_forgets_the_buyer_and_keeps_the_money() {
        let before = bought();
        let after = erase(&before, 5).expect("something to forget");
        assert_eq!((after.version, after.updated_at), (before.version + 1, 5));
        assert!(!holds_personal_data(&after));
        let text = serde_json::to_string(&after).unwrap();
        assert!(!text.contains("buyer-7") && !text.contains("example.com"), "{text}");
        let kept = Payment { version: before.version, updated_at: before.updated_at, ..after.clone() };
        let forgotten = Payment {
            customer_uid: String::new(),
            customer_email: Email::default(),
            custom_params: Default::default(),
            redirect_url: String::new(),
            success_url: String::new(),
            failure_url: String::new(),
            ..before
        };
        assert_eq!(kept, forgotten, "amounts, refunds, status, ref, order and times stay");
        assert_eq!(erase(&after, 6), None, "erasing again changes nothing");
    }

    #[test]
    fn every_payment_inside_a_json_copy_is_erased_and_nothing_else() {
        let mut body = serde_json::json!({
            "type": "payment.paid",
            "data": { "event_id": "7-1", "payment": serde_json::to_value(bought()).unwrap() },
            "list": [serde_json::to_value(bought()).unwrap()],
        });
        assert!(erase_in_json(&mut body));
        let text = body.to_string();
        assert!(!text.contains("buyer-7") && !text.contains("example.com") && !text.contains("loyalty"), "{text}");
        assert_eq!(body["data"]["payment"]["amount_minor"], 999);
        assert_eq!(body["data"]["event_id"], "7-1");
        assert_eq!(body["list"][0]["cancelled_amount"], 100);
        assert!(!erase_in_json(&mut body), "a second pass finds nothing");
    }

    #[test]
    fn a_raw_pingback_keeps_what_happened_and_drops_the_buyer() {
        let raw = "uid=buyer-7&goodsid=gold&slength=1&speriod=month&type=0&ref=b1&is_test=1\
                   &email=b%40example.com&loyalty=7&goodsid%5B0%5D=x&sign_version=2&sig=abc";
        let erased = erase_in_pingback_query(raw);
        assert_eq!(
            erased,
            "goodsid=gold&slength=1&speriod=month&type=0&ref=b1&is_test=1&goodsid%5B0%5D=x&sign_version=2&sig=abc"
        );
        assert_eq!(erase_in_pingback_query(&erased), erased);
    }
}
