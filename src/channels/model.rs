//! A channel and the rules for creating one.

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use crate::{
    net::parse_cidr,
    validation::{self, Violations},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Paymentwall,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paymentwall => "PAYMENTWALL",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        (s == "PAYMENTWALL").then_some(Self::Paymentwall)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelMode {
    Test,
    Live,
}

impl ChannelMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Test => "TEST",
            Self::Live => "LIVE",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TEST" => Some(Self::Test),
            "LIVE" => Some(Self::Live),
            _ => None,
        }
    }
}

/// How Paymentwall signs a channel's requests and pingbacks (paymentwall.md section 2).
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

/// Paymentwall's API, unless a channel points elsewhere (the simulator).
pub const DEFAULT_API_BASE_URL: &str = "https://api.paymentwall.com";

/// The addresses Paymentwall publishes as its pingback sources.
pub const PUBLISHED_PINGBACK_SOURCES: [&str; 6] = [
    "174.36.92.186/32",
    "174.36.92.187/32",
    "174.36.92.192/32",
    "174.36.96.66/32",
    "174.37.14.28/32",
    "216.127.71.0/24",
];

pub fn published_pingback_sources() -> Vec<IpNet> {
    PUBLISHED_PINGBACK_SOURCES.iter().map(|cidr| cidr.parse().expect("constant CIDR parses")).collect()
}

/// Paymentwall credentials. `Debug` shows the secret as `[REDACTED]`.
#[derive(Debug, Clone)]
pub struct PaymentwallConfig {
    pub project_key: String,
    pub secret_key: SecretString,
    pub widget: String,
    pub sign_version: SignVersion,
    /// Where pingbacks may come from; never empty once stored (defaults filled in).
    pub pingback_allowlist: Vec<IpNet>,
    /// Base of every Paymentwall URL, without a trailing slash.
    pub api_base_url: String,
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub channel_key: String,
    /// Who uses it: the owner, or the sub-merchant the owner assigned it to.
    pub merchant_id: String,
    /// The merchant that created it: only the owner (or the owner's parent) may change or delete it.
    pub owner_id: String,
    pub name: String,
    pub provider: Provider,
    pub mode: ChannelMode,
    pub paymentwall: PaymentwallConfig,
    /// Bumped by every change; caches keep the newest.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// Deleted while it had payments: no new checkouts, but its pingbacks still verify.
    pub disabled_at: Option<i64>,
}

impl Channel {
    pub fn pingback_path(&self) -> String {
        format!("/pingback/paymentwall/{}", self.channel_key)
    }
}

/// A CreateChannel request as received; `validate` turns it into a channel config or names every
/// bad field. Enums arrive as `None` when unspecified or unknown.
#[derive(Debug, Clone, Default)]
pub struct NewChannel {
    pub channel_key: String,
    pub name: String,
    pub provider: Option<Provider>,
    pub mode: Option<ChannelMode>,
    /// `None` when the `paymentwall` message was absent.
    pub paymentwall: Option<NewPaymentwall>,
    /// Assign the channel to this sub-merchant of the caller; empty: the caller owns it.
    pub sub_merchant_id: String,
}

#[derive(Debug, Clone, Default)]
pub struct NewPaymentwall {
    pub project_key: String,
    pub secret_key: SecretString,
    pub widget: String,
    pub sign_version: u32,
    pub pingback_allowlist: Vec<String>,
    pub api_base_url: String,
}

pub const MAX_NAME: usize = 128;
pub const DEFAULT_WIDGET: &str = "p1_1";

impl NewChannel {
    /// The proto paths of the fields a create request sets, for the audit trail (never values).
    pub fn given_fields(&self) -> Vec<&'static str> {
        let mut fields = vec!["channel_key", "name", "provider", "mode"];
        if !self.sub_merchant_id.is_empty() {
            fields.push("sub_merchant_id");
        }
        if let Some(pw) = &self.paymentwall {
            let given = [
                ("paymentwall.project_key", !pw.project_key.is_empty()),
                ("paymentwall.secret_key", !pw.secret_key.expose_secret().is_empty()),
                ("paymentwall.widget", !pw.widget.is_empty()),
                ("paymentwall.sign_version", pw.sign_version != 0),
                ("paymentwall.pingback_allowlist", !pw.pingback_allowlist.is_empty()),
                ("paymentwall.api_base_url", !pw.api_base_url.is_empty()),
            ];
            fields.extend(given.into_iter().filter(|(_, set)| *set).map(|(name, _)| name));
        }
        fields
    }

    /// Checks every field and fills defaults, giving the channel to store. Nothing is stored by this.
    /// `allow_internal_targets`: whether `api_base_url` may point at internal addresses (the
    /// simulator in tests and local runs).
    pub fn validate(
        self,
        merchant_id: &str,
        now: i64,
        allow_internal_targets: bool,
    ) -> Result<Channel, validation::InvalidArgument> {
        let mut v = Violations::default();
        let channel_key = if self.channel_key.is_empty() {
            format!("ch_{}", ulid::Ulid::new())
        } else {
            validation::identifier(&mut v, "channel_key", &self.channel_key, validation::CHANNEL_KEY);
            self.channel_key
        };
        validation::text(&mut v, "name", &self.name, MAX_NAME);
        if self.provider.is_none() {
            v.add("provider", "must be PROVIDER_PAYMENTWALL");
        }
        if self.mode.is_none() {
            v.add("mode", "must be CHANNEL_MODE_TEST or CHANNEL_MODE_LIVE");
        }
        let config = match self.paymentwall {
            None => {
                v.add("paymentwall", "is required for a Paymentwall channel");
                None
            }
            Some(pw) => validate_paymentwall(pw, allow_internal_targets, &mut v),
        };
        v.check()?;
        // All `None`s above added a violation, so these are present.
        let (Some(provider), Some(mode), Some(paymentwall)) = (self.provider, self.mode, config) else {
            unreachable!("validated above")
        };
        Ok(Channel {
            channel_key,
            merchant_id: merchant_id.to_owned(),
            // The caller's to set when the creator is not who uses it.
            owner_id: merchant_id.to_owned(),
            name: self.name,
            provider,
            mode,
            paymentwall,
            version: 1,
            created_at: now,
            updated_at: now,
            disabled_at: None,
        })
    }
}

pub(crate) fn validate_paymentwall(
    pw: NewPaymentwall,
    allow_internal_targets: bool,
    v: &mut Violations,
) -> Option<PaymentwallConfig> {
    let key_ok = |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
    if !key_ok(&pw.project_key) {
        v.add("paymentwall.project_key", "is required (printable, at most 128 characters)");
    }
    if !key_ok(pw.secret_key.expose_secret()) {
        v.add("paymentwall.secret_key", "is required (printable, at most 128 characters)");
    }
    let widget = if pw.widget.is_empty() { DEFAULT_WIDGET.to_owned() } else { pw.widget };
    if widget.len() > 64 || !widget.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        v.add("paymentwall.widget", "must be a widget code such as p1_1");
    }
    let sign_version = match pw.sign_version {
        0 | 3 => Some(SignVersion::V3),
        2 => Some(SignVersion::V2),
        _ => {
            v.add("paymentwall.sign_version", "must be 2 (MD5) or 3 (SHA-256)");
            None
        }
    };
    let mut allowlist = Vec::new();
    let field = "paymentwall.pingback_allowlist";
    if validation::count(v, field, pw.pingback_allowlist.len(), validation::MAX_PINGBACK_ALLOWLIST) {
        for (i, cidr) in pw.pingback_allowlist.iter().enumerate() {
            // Bounded before parsing: the parser's message quotes the entry.
            if !validation::text(v, format!("{field}[{i}]"), cidr, validation::MAX_ENTRY) {
                continue;
            }
            match parse_cidr(cidr) {
                Ok(net) => allowlist.push(net),
                Err(e) => v.add(format!("{field}[{i}]"), e),
            }
        }
    }
    if allowlist.is_empty() && pw.pingback_allowlist.is_empty() {
        allowlist = published_pingback_sources();
    }
    let raw_base_url = if pw.api_base_url.is_empty() { DEFAULT_API_BASE_URL } else { &pw.api_base_url };
    // Stored as the URL parser writes it, without the trailing '/' (paths are appended to it).
    let mut api_base_url = raw_base_url.to_owned();
    match validation::parse_url(raw_base_url) {
        Ok(u) if u.query().is_none() && u.fragment().is_none() => {
            api_base_url = u.as_str().trim_end_matches('/').to_owned();
            if let Err(problem) = crate::net::egress::check_url_naming(
                &api_base_url,
                allow_internal_targets,
                "PAYGATE_PROVIDER_ALLOW_PRIVATE_TARGETS",
            ) {
                v.add("paymentwall.api_base_url", problem);
            }
        }
        Ok(_) => v.add("paymentwall.api_base_url", "must not have a query or fragment"),
        Err(problem) => v.add("paymentwall.api_base_url", problem),
    }
    Some(PaymentwallConfig {
        project_key: pw.project_key,
        secret_key: pw.secret_key,
        widget,
        sign_version: sign_version?,
        pingback_allowlist: allowlist,
        api_base_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> NewChannel {
        NewChannel {
            channel_key: String::new(),
            name: "main".into(),
            provider: Some(Provider::Paymentwall),
            mode: Some(ChannelMode::Test),
            sub_merchant_id: String::new(),
            paymentwall: Some(NewPaymentwall {
                project_key: "pk".into(),
                secret_key: SecretString::from("sk"),
                ..Default::default()
            }),
        }
    }

    fn fields(c: NewChannel) -> Vec<String> {
        match c.validate("mer_1", 0, false) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|v| v.field.clone()).collect(),
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let channel = valid().validate("mer_1", 0, false).expect("valid");
        assert!(channel.channel_key.starts_with("ch_"));
        let pw = channel.paymentwall;
        assert_eq!(pw.sign_version, SignVersion::V3);
        assert_eq!(pw.widget, "p1_1");
        assert_eq!(pw.api_base_url, "https://api.paymentwall.com");
        assert_eq!(pw.pingback_allowlist, published_pingback_sources());
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = valid();
        c.provider = None;
        assert_eq!(fields(c), ["provider"]);
        let mut c = valid();
        c.paymentwall.as_mut().unwrap().sign_version = 1;
        assert_eq!(fields(c), ["paymentwall.sign_version"]);
        let mut c = valid();
        c.paymentwall.as_mut().unwrap().pingback_allowlist = vec!["10.0.0.0/8".into(), "300.1.1.1".into()];
        assert_eq!(fields(c), ["paymentwall.pingback_allowlist[1]"]);
        let mut c = valid();
        c.paymentwall.as_mut().unwrap().secret_key = SecretString::from("");
        assert_eq!(fields(c), ["paymentwall.secret_key"]);
        let mut c = valid();
        c.paymentwall.as_mut().unwrap().api_base_url = "ftp://example.com".into();
        assert_eq!(fields(c), ["paymentwall.api_base_url"]);
        let mut c = valid();
        c.channel_key = "has space".into();
        assert_eq!(fields(c), ["channel_key"]);
    }

    proptest::proptest! {
        #[test]
        fn any_channel_text_is_refused_by_name(field in 0..5usize, value in "\\PC{0,3}[\\x00-\\x1f\\x7f]?\\PC{0,3}|.{0,300}") {
            let mut c = valid();
            let pw = c.paymentwall.as_mut().unwrap();
            let name = match field {
                0 => { c.channel_key = value.clone(); "channel_key" }
                1 => { c.name = value.clone(); "name" }
                2 => { pw.pingback_allowlist = vec![value.clone()]; "paymentwall.pingback_allowlist[0]" }
                3 => { pw.api_base_url = value.clone(); "paymentwall.api_base_url" }
                _ => { pw.project_key = value.clone(); "paymentwall.project_key" }
            };
            if let Err(e) = c.validate("mer_1", 0, false) {
                proptest::prop_assert!(e.0.iter().all(|x| !x.field.is_empty() && !x.description.is_empty()));
                // Values are quoted only when short (the CIDR parser quotes its input).
                proptest::prop_assert!(e.to_string().len() < 1000, "{e}");
                if value.chars().any(char::is_control) {
                    proptest::prop_assert!(e.0.iter().any(|x| x.field == name), "{name}: {e}");
                }
            } else {
                proptest::prop_assert!(!value.chars().any(char::is_control), "{name} accepted with a control character");
            }
        }
    }
}
