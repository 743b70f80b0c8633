//! A Paymentwall channel's credentials: how they are checked when a merchant gives them, and
//! read back from the provider-owned config a channel stores.

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::signature::SignVersion;
use crate::{
    channels::config::{CONFIRM_DIGITAL_DELIVERY, ConfigContext, ConfigField, ProviderConfig},
    net::{parse_cidr, unfit_for_a_list},
    payments::provider::ProviderError,
    validation::{self, Violations},
};

pub const NAME: &str = "paymentwall";

/// Paymentwall's API, unless a channel points elsewhere (the simulator).
pub const DEFAULT_API_BASE_URL: &str = "https://api.paymentwall.com";

pub const DEFAULT_WIDGET: &str = "p1_1";

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

pub const SECRET_KEY: &str = "secret_key";

/// The fields of a Paymentwall config, as update masks name them (`paymentwall.<name>`).
pub const FIELDS: [ConfigField; 7] = [
    ConfigField { name: "project_key", secret: false },
    ConfigField { name: SECRET_KEY, secret: true },
    ConfigField { name: "widget", secret: false },
    ConfigField { name: "sign_version", secret: false },
    ConfigField { name: "pingback_allowlist", secret: false },
    ConfigField { name: "api_base_url", secret: false },
    ConfigField { name: CONFIRM_DIGITAL_DELIVERY, secret: false },
];

/// A channel's Paymentwall credentials, read. `Debug` shows the secret as `[REDACTED]`.
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
    /// Digital goods: every payment paid is confirmed to Paymentwall as delivered, by itself.
    pub confirm_digital_delivery: bool,
}

/// The settings half as stored: exactly the columns Paymentwall channels had before configs
/// became provider-owned (migration 0004 builds this shape from them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub project_key: String,
    pub widget: String,
    pub sign_version: u32,
    pub pingback_allowlist: Vec<String>,
    pub api_base_url: String,
    /// Added after 0.3.0; absent (false) in configs stored before.
    pub confirm_digital_delivery: bool,
}

impl Settings {
    pub fn of(config: &ProviderConfig) -> Self {
        Self::deserialize(&config.settings).unwrap_or_default()
    }
}

impl PaymentwallConfig {
    /// Reads a stored config; one that fails here was not written by `check`.
    pub fn decode(config: &ProviderConfig) -> Result<Self, ProviderError> {
        let corrupt = |what: &str| ProviderError::Unsupported(format!("the channel's Paymentwall config: {what}"));
        let settings = Settings::deserialize(&config.settings).map_err(|e| corrupt(&e.to_string()))?;
        let sign_version = SignVersion::from_number(settings.sign_version).ok_or_else(|| corrupt("sign_version"))?;
        let pingback_allowlist = settings
            .pingback_allowlist
            .iter()
            .map(|cidr| parse_cidr(cidr).map_err(|_| corrupt("pingback_allowlist")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            project_key: settings.project_key,
            secret_key: config.secret(SECRET_KEY).cloned().ok_or_else(|| corrupt("no secret_key"))?,
            widget: settings.widget,
            sign_version,
            pingback_allowlist,
            api_base_url: settings.api_base_url,
            confirm_digital_delivery: settings.confirm_digital_delivery,
        })
    }

    pub fn encode(&self) -> ProviderConfig {
        let settings = Settings {
            project_key: self.project_key.clone(),
            widget: self.widget.clone(),
            sign_version: self.sign_version.number(),
            pingback_allowlist: self.pingback_allowlist.iter().map(ToString::to_string).collect(),
            api_base_url: self.api_base_url.clone(),
            confirm_digital_delivery: self.confirm_digital_delivery,
        };
        ProviderConfig { settings: json!(settings), secrets: [(SECRET_KEY.to_owned(), self.secret_key.clone())].into() }
    }
}

/// Credentials as a merchant gives them (the typed `PaymentwallCredentials` message).
#[derive(Debug, Clone, Default)]
pub struct Given {
    pub project_key: String,
    pub secret_key: SecretString,
    pub widget: String,
    pub sign_version: u32,
    pub pingback_allowlist: Vec<String>,
    pub api_base_url: String,
    pub confirm_digital_delivery: bool,
}

impl Given {
    pub fn into_config(self) -> ProviderConfig {
        let settings = Settings {
            project_key: self.project_key,
            widget: self.widget,
            sign_version: self.sign_version,
            pingback_allowlist: self.pingback_allowlist,
            api_base_url: self.api_base_url,
            confirm_digital_delivery: self.confirm_digital_delivery,
        };
        ProviderConfig { settings: json!(settings), secrets: [(SECRET_KEY.to_owned(), self.secret_key)].into() }
    }
}

/// Checks every field of a given config and fills defaults.
pub fn check(given: &ProviderConfig, ctx: &ConfigContext<'_>, v: &mut Violations) -> ProviderConfig {
    let field = |name: &str| format!("{}{name}", ctx.field_prefix);
    let pw = match Settings::deserialize(&given.settings) {
        Ok(settings) => settings,
        Err(e) => {
            v.add(field("settings"), format!("is not a Paymentwall config: {e}"));
            Settings::default()
        }
    };
    let secret_key = given.secret(SECRET_KEY).cloned().unwrap_or_else(|| SecretString::from(""));
    let key_ok = |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
    if !key_ok(&pw.project_key) {
        v.add(field("project_key"), "is required (printable, at most 128 characters)");
    }
    if !key_ok(secret_key.expose_secret()) {
        v.add(field(SECRET_KEY), "is required (printable, at most 128 characters)");
    }
    let widget = if pw.widget.is_empty() { DEFAULT_WIDGET.to_owned() } else { pw.widget };
    if widget.len() > 64 || !widget.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        v.add(field("widget"), "must be a widget code such as p1_1");
    }
    let sign_version = match pw.sign_version {
        0 | 3 => SignVersion::V3,
        2 => SignVersion::V2,
        _ => {
            v.add(field("sign_version"), "must be 2 (MD5) or 3 (SHA-256)");
            SignVersion::V3
        }
    };
    let pingback_allowlist = check_allowlist(&pw.pingback_allowlist, &field("pingback_allowlist"), v);
    let api_base_url = check_base_url(&pw.api_base_url, &field("api_base_url"), ctx.allow_internal_targets, v);
    PaymentwallConfig {
        project_key: pw.project_key,
        secret_key,
        widget,
        sign_version,
        pingback_allowlist,
        api_base_url,
        confirm_digital_delivery: pw.confirm_digital_delivery,
    }
    .encode()
}

fn check_allowlist(given: &[String], field: &str, v: &mut Violations) -> Vec<IpNet> {
    let mut allowlist = Vec::new();
    if validation::count(v, field, given.len(), validation::MAX_PINGBACK_ALLOWLIST) {
        for (i, cidr) in given.iter().enumerate() {
            // Bounded before parsing: the parser's message quotes the entry.
            if !validation::text(v, format!("{field}[{i}]"), cidr, validation::MAX_ENTRY) {
                continue;
            }
            match parse_cidr(cidr) {
                Ok(net) => match unfit_for_a_list(&net) {
                    Some(problem) => v.add(format!("{field}[{i}]"), problem),
                    None => allowlist.push(net),
                },
                Err(e) => v.add(format!("{field}[{i}]"), e),
            }
        }
    }
    if given.is_empty() { published_pingback_sources() } else { allowlist }
}

/// Stored as the URL parser writes it, without the trailing '/' (paths are appended to it).
fn check_base_url(given: &str, field: &str, allow_internal_targets: bool, v: &mut Violations) -> String {
    let raw = if given.is_empty() { DEFAULT_API_BASE_URL } else { given };
    match validation::parse_url(raw) {
        Ok(u) if u.query().is_none() && u.fragment().is_none() => {
            let url = u.as_str().trim_end_matches('/').to_owned();
            if let Err(problem) = crate::net::egress::check_url_naming(
                &url,
                allow_internal_targets,
                "PAYGATE_PROVIDER_ALLOW_PRIVATE_TARGETS",
            ) {
                v.add(field, problem);
            }
            url
        }
        Ok(_) => {
            v.add(field, "must not have a query or fragment");
            raw.to_owned()
        }
        Err(problem) => {
            v.add(field, problem);
            raw.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::{ChannelMode, NewChannel, config::ConfigRules};

    struct Rules;

    impl ConfigRules for Rules {
        fn name(&self) -> &'static str {
            NAME
        }
        fn display_name(&self) -> &'static str {
            "Paymentwall"
        }
        fn config_fields(&self) -> &'static [ConfigField] {
            &FIELDS
        }
        fn check_config(&self, given: ProviderConfig, ctx: &ConfigContext<'_>, v: &mut Violations) -> ProviderConfig {
            check(&given, ctx, v)
        }
    }

    fn valid() -> (NewChannel, Given) {
        let channel = NewChannel {
            channel_key: String::new(),
            name: "main".into(),
            provider: NAME.into(),
            mode: Some(ChannelMode::Test),
            sub_merchant_id: String::new(),
            config: None,
        };
        let given = Given { project_key: "pk".into(), secret_key: SecretString::from("sk"), ..Default::default() };
        (channel, given)
    }

    fn fields((mut c, pw): (NewChannel, Given)) -> Vec<String> {
        c.config = Some(pw.into_config());
        // Channels look the rules up by the provider's name.
        let rules = (c.provider == NAME).then_some(&Rules as &dyn ConfigRules);
        match c.validate("mer_1", 0, rules, false) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|v| v.field.clone()).collect(),
        }
    }

    #[test]
    fn defaults_are_filled_in_and_read_back() {
        let (mut c, pw) = valid();
        c.config = Some(pw.into_config());
        let channel = c.validate("mer_1", 0, Some(&Rules), false).expect("valid");
        assert!(channel.channel_key.starts_with("ch_"));
        assert_eq!(channel.provider, "paymentwall");
        let pw = PaymentwallConfig::decode(&channel.config).expect("reads back");
        assert_eq!(pw.sign_version, SignVersion::V3);
        assert_eq!(pw.widget, "p1_1");
        assert_eq!(pw.api_base_url, "https://api.paymentwall.com");
        assert_eq!(pw.pingback_allowlist, published_pingback_sources());
        assert_eq!(pw.secret_key.expose_secret(), "sk");
        // The stored settings never carry the secret.
        assert!(!channel.config.settings.to_string().contains("sk\""), "{}", channel.config.settings);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = valid();
        c.0.provider = String::new();
        assert_eq!(fields(c), ["provider"]);
        let mut c = valid();
        c.1.sign_version = 1;
        assert_eq!(fields(c), ["paymentwall.sign_version"]);
        let mut c = valid();
        c.1.pingback_allowlist = vec!["10.0.0.0/8".into(), "300.1.1.1".into()];
        assert_eq!(fields(c), ["paymentwall.pingback_allowlist[1]"]);
        let mut c = valid();
        c.1.pingback_allowlist = vec!["0.0.0.0/0".into(), "0.0.0.0".into(), "::/128".into()];
        assert_eq!(fields(c), ["paymentwall.pingback_allowlist[1]", "paymentwall.pingback_allowlist[2]"]);
        let mut c = valid();
        c.1.secret_key = SecretString::from("");
        assert_eq!(fields(c), ["paymentwall.secret_key"]);
        let mut c = valid();
        c.1.api_base_url = "ftp://example.com".into();
        assert_eq!(fields(c), ["paymentwall.api_base_url"]);
        let mut c = valid();
        c.0.channel_key = "has space".into();
        assert_eq!(fields(c), ["channel_key"]);
        let (mut c, _) = valid();
        c.config = None;
        assert_eq!(
            c.validate("mer_1", 0, Some(&Rules), false).unwrap_err().0.iter().next().unwrap().field,
            "paymentwall"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_channel_text_is_refused_by_name(field in 0..5usize, value in "\\PC{0,3}[\\x00-\\x1f\\x7f]?\\PC{0,3}|.{0,300}") {
            let (mut c, mut pw) = valid();
            let name = match field {
                0 => { c.channel_key = value.clone(); "channel_key" }
                1 => { c.name = value.clone(); "name" }
                2 => { pw.pingback_allowlist = vec![value.clone()]; "paymentwall.pingback_allowlist[0]" }
                3 => { pw.api_base_url = value.clone(); "paymentwall.api_base_url" }
                _ => { pw.project_key = value.clone(); "paymentwall.project_key" }
            };
            c.config = Some(pw.into_config());
            if let Err(e) = c.validate("mer_1", 0, Some(&Rules), false) {
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
