//! What callers and providers may send: the charset and length of every identifier, the length of
//! free text, the shape of URLs and the number of entries of repeated fields. The edges (gRPC
//! services, the pingback route and parser) check input here before any lookup or log line, so
//! a NUL byte or a 60 KB id is refused naming its field instead of reaching the database.
//!
//! Ground floor: this module imports nothing from the rest of the crate. docs/limits.md documents
//! the rules below; keep the two in step.

use std::fmt;

/// One problem with one request field, named by its proto path (e.g. `customer.uid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Collects every problem of a request so the caller can fix them all at once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation { field: field.into(), description: description.into() });
    }

    /// Adds the problems another check found.
    pub fn extend(&mut self, other: InvalidArgument) {
        self.0.extend(other.0.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &FieldViolation> {
        self.0.iter()
    }

    /// `Ok(())` when nothing was added, otherwise the collected violations as an error.
    pub fn check(self) -> Result<(), InvalidArgument> {
        if self.0.is_empty() { Ok(()) } else { Err(InvalidArgument(self)) }
    }
}

/// A request that failed validation; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidArgument(pub Violations);

impl InvalidArgument {
    pub fn single(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut violations = Violations::default();
        violations.add(field, description);
        Self(violations)
    }
}

impl fmt::Display for InvalidArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid request: ")?;
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

/// The characters an identifier may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// `A-Z a-z 0-9 _ -`: ids paygate makes and keys that appear in URLs.
    Token,
    /// Visible ASCII (`!` to `~`): no space, no control character, nothing outside ASCII.
    VisibleAscii,
    /// Any Unicode character except control characters (C0, DEL, C1).
    Printable,
}

impl Charset {
    fn allows(self, c: char) -> bool {
        match self {
            Self::Token => c.is_ascii_alphanumeric() || c == '_' || c == '-',
            Self::VisibleAscii => c.is_ascii_graphic(),
            Self::Printable => !c.is_control(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Token => "letters, digits, '_' or '-'",
            Self::VisibleAscii => "visible ASCII characters (no spaces)",
            Self::Printable => "printable characters (no control characters)",
        }
    }
}

/// An identifier's charset and maximum length (in characters; ASCII charsets: bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub charset: Charset,
    pub max: usize,
}

/// `channel_key`, also the pingback path segment.
pub const CHANNEL_KEY: Rule = Rule { charset: Charset::Token, max: 64 };
/// Ids paygate makes: `pay_...`, `can_...`, `sub_...`, delivery ids, merchant ids.
pub const ID: Rule = Rule { charset: Charset::Token, max: 64 };
/// A merchant's own order id, as given to CreateCheckoutSession.
pub const MERCHANT_UID: Rule = Rule { charset: Charset::Printable, max: 128 };
/// A merchant_uid looked up or filtered on: also those paygate generates for renewals and repeat
/// payments (`~<merchant_uid>/repeat/<provider ref>`), which are longer.
pub const MERCHANT_UID_LOOKUP: Rule = Rule { charset: Charset::Printable, max: 300 };
pub const CUSTOMER_UID: Rule = Rule { charset: Charset::Printable, max: 64 };
pub const IDEMPOTENCY_KEY: Rule = Rule { charset: Charset::VisibleAscii, max: 255 };
/// Page tokens are base64url of a key this server issued.
pub const PAGE_TOKEN: Rule = Rule { charset: Charset::Token, max: 512 };
/// A provider's transaction reference (Paymentwall `ref`, `UNIQUE_REF`).
pub const PROVIDER_REF: Rule = Rule { charset: Charset::VisibleAscii, max: 128 };
/// The name of a provider callback parameter.
pub const PARAMETER_NAME: Rule = Rule { charset: Charset::VisibleAscii, max: 64 };

/// URLs (success, failure, webhook, provider base): at most this many bytes.
pub const MAX_URL: usize = 2048;
/// Event types of a webhook endpoint.
pub const MAX_EVENT_TYPES: usize = 32;
/// Pingback source CIDR blocks of a channel.
pub const MAX_PINGBACK_ALLOWLIST: usize = 64;
/// `statuses` filters (there are 7 statuses; repeats are harmless but bounded).
pub const MAX_STATUSES: usize = 16;
/// `payment_ids` / `merchant_uids` filters of WatchPayments.
pub const MAX_FILTER_IDS: usize = 1000;
/// `update_mask.paths` of UpdateChannel.
pub const MAX_MASK_PATHS: usize = 16;
/// A text field whose value is only ever compared or echoed (event types, mask paths, CIDR blocks).
pub const MAX_ENTRY: usize = 64;

/// Why `value` breaks `rule`, if it does; never quotes the value (it may be huge or hostile).
pub fn problem(value: &str, rule: Rule) -> Option<String> {
    let len = if rule.charset == Charset::Printable { value.chars().count() } else { value.len() };
    if value.is_empty() {
        Some("is required".into())
    } else if len > rule.max || !value.chars().all(|c| rule.charset.allows(c)) {
        Some(format!("must be 1 to {} {}", rule.max, rule.charset.describe()))
    } else {
        None
    }
}

/// A required identifier. Returns whether it is acceptable.
pub fn identifier(v: &mut Violations, field: impl Into<String>, value: &str, rule: Rule) -> bool {
    match problem(value, rule) {
        Some(p) => {
            v.add(field, p);
            false
        }
        None => true,
    }
}

/// An identifier that may be left empty.
pub fn optional_identifier(v: &mut Violations, field: impl Into<String>, value: &str, rule: Rule) -> bool {
    value.is_empty() || identifier(v, field, value, rule)
}

/// Free text of at most `max` characters without control characters; empty allowed.
pub fn text(v: &mut Violations, field: impl Into<String>, value: &str, max: usize) -> bool {
    let chars = value.chars().count();
    if chars > max {
        v.add(field, format!("must be at most {max} characters (got {chars})"));
        false
    } else if value.chars().any(char::is_control) {
        v.add(field, "must not contain control characters");
        false
    } else {
        true
    }
}

/// Free text that must not be blank.
pub fn required_text(v: &mut Violations, field: impl Into<String>, value: &str, max: usize) -> bool {
    if value.trim().is_empty() {
        v.add(field, "is required");
        false
    } else {
        text(v, field, value, max)
    }
}

/// An absolute http(s) URL with a host. The raw text is checked first: the URL parser silently
/// drops tabs and newlines and trims spaces, so what it accepts is not what was sent. Returns
/// the parsed URL, whose serialisation is what gets stored.
pub fn url(v: &mut Violations, field: impl Into<String>, value: &str) -> Option<url::Url> {
    match parse_url(value) {
        Ok(u) => Some(u),
        Err(p) => {
            v.add(field, p);
            None
        }
    }
}

/// An optional URL: empty stays empty, anything else is normalised.
pub fn optional_url(v: &mut Violations, field: impl Into<String>, value: &str) -> Option<String> {
    if value.is_empty() { Some(String::new()) } else { url(v, field, value).map(String::from) }
}

/// The stored form of a URL that passed [`url`]; empty stays empty.
pub fn normalised_url(value: &str) -> String {
    match parse_url(value) {
        Ok(u) => u.into(),
        Err(_) => value.to_owned(),
    }
}

/// [`url`] for callers with their own error type.
pub fn parse_url(value: &str) -> Result<url::Url, String> {
    if value.len() > MAX_URL {
        return Err(format!("must be at most {MAX_URL} characters"));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain whitespace or control characters".into());
    }
    match url::Url::parse(value) {
        Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() => Ok(u),
        _ => Err("must be an absolute http(s) URL".into()),
    }
}

/// A repeated field of at most `max` entries.
pub fn count(v: &mut Violations, field: impl Into<String>, len: usize, max: usize) -> bool {
    if len > max {
        v.add(field, format!("at most {max} entries (got {len})"));
        false
    } else {
        true
    }
}

/// `value` as it may appear in a log line: at most `max` bytes, control characters escaped, and
/// the full length when cut.
pub fn loggable(value: &str, max: usize) -> String {
    let mut out = String::new();
    for c in value.chars().flat_map(char::escape_debug) {
        if out.len() >= max {
            out.push_str(&format!("...({} bytes)", value.len()));
            break;
        }
        out.push(c);
    }
    out
}

/// The longest e-mail address (RFC 5321's path limit less its brackets).
pub const MAX_EMAIL: usize = 254;

/// ISO 3166-1 alpha-2, as written: two capital letters.
pub fn is_country_code(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// Shaped like an address (local part, `@`, a dotted domain, no spaces); only the mail server can
/// say more.
pub fn looks_like_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => !local.is_empty() && domain.contains('.') && !s.contains(char::is_whitespace),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: &Violations) -> Vec<&str> {
        v.iter().map(|x| x.field.as_str()).collect()
    }

    #[test]
    fn identifiers_follow_their_rule() {
        let mut v = Violations::default();
        assert!(identifier(&mut v, "a", "ch_main-1", CHANNEL_KEY));
        assert!(!identifier(&mut v, "b", "ma\0in", CHANNEL_KEY));
        assert!(!identifier(&mut v, "c", &"k".repeat(65), CHANNEL_KEY));
        assert!(!identifier(&mut v, "d", "", ID));
        assert!(optional_identifier(&mut v, "e", "", ID));
        assert!(identifier(&mut v, "f", "Bestellung Nr. 7 / Ü", MERCHANT_UID));
        assert!(!identifier(&mut v, "g", "o\u{7f}", MERCHANT_UID));
        assert!(!identifier(&mut v, "h", "key with space", IDEMPOTENCY_KEY));
        assert!(identifier(&mut v, "i", &"ü".repeat(64), CUSTOMER_UID), "lengths count characters");
        assert_eq!(fields(&v), ["b", "c", "d", "g", "h"]);
        assert!(v.iter().all(|x| !x.description.contains('\0')), "values are never quoted");
    }

    #[test]
    fn urls_are_refused_with_whitespace_and_normalised_otherwise() {
        for bad in ["https://a.example/x\ty", " https://a.example", "https://a.example/\n", "ftp://a.example", "x"] {
            assert!(parse_url(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_url("HTTPS://A.Example:443/p?q=$ref").unwrap().as_str(), "https://a.example/p?q=$ref");
        let mut v = Violations::default();
        assert_eq!(optional_url(&mut v, "u", ""), Some(String::new()));
        assert!(v.is_empty());
    }

    #[test]
    fn log_copies_are_short() {
        assert_eq!(loggable("main", 64), "main");
        assert_eq!(loggable("a\0b", 64), "a\\0b");
        let long = loggable(&"k".repeat(60 * 1024), 64);
        assert!(long.starts_with(&"k".repeat(64)) && long.ends_with("...(61440 bytes)"), "{long}");
    }
}
