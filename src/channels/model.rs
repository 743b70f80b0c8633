//! A channel and the rules for creating one. What is inside its credentials is its provider's
//! business (`config`); a channel only knows which provider they belong to.

use super::config::{ConfigContext, ConfigRules, ProviderConfig};
use crate::validation::{self, Violations};

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

#[derive(Debug, Clone)]
pub struct Channel {
    pub channel_key: String,
    /// Who uses it: the owner, or the sub-merchant the owner assigned it to.
    pub merchant_id: String,
    /// The merchant that created it: only the owner (or the owner's parent) may change or delete it.
    pub owner_id: String,
    pub name: String,
    /// The name of the provider its credentials belong to (`ConfigRules::name`).
    pub provider: String,
    pub mode: ChannelMode,
    pub config: ProviderConfig,
    /// Bumped by every change; caches keep the newest.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// Deleted while it had payments: no new checkouts, but its pingbacks still verify.
    pub disabled_at: Option<i64>,
}

/// A CreateChannel request as received; `validate` turns it into a channel or names every bad
/// field. The mode arrives as `None` when unspecified or unknown.
#[derive(Debug, Clone, Default)]
pub struct NewChannel {
    pub channel_key: String,
    pub name: String,
    /// The provider's name; empty when the request named none.
    pub provider: String,
    pub mode: Option<ChannelMode>,
    /// `None` when the request carried no credentials.
    pub config: Option<ProviderConfig>,
    /// Assign the channel to this sub-merchant of the caller; empty: the caller owns it.
    pub sub_merchant_id: String,
}

pub const MAX_NAME: usize = 128;

/// The prefix a provider's config fields carry in requests and errors: `paymentwall.secret_key`.
pub fn field_prefix(provider: &str) -> String {
    format!("{provider}.")
}

impl NewChannel {
    /// The proto paths of the fields a create request sets, for the audit trail (never values).
    pub fn given_fields(&self, rules: Option<&dyn ConfigRules>) -> Vec<String> {
        let mut fields: Vec<String> = ["channel_key", "name", "provider", "mode"].map(String::from).into();
        if !self.sub_merchant_id.is_empty() {
            fields.push("sub_merchant_id".into());
        }
        if let (Some(config), Some(rules)) = (&self.config, rules) {
            fields.extend(config.given_fields(&field_prefix(rules.name()), rules.config_fields()));
        }
        fields
    }

    /// Checks every field and fills defaults, giving the channel to store. Nothing is stored by this.
    /// `rules`: the named provider's, `None` when paygate runs no such provider.
    /// `allow_internal_targets`: whether the config may point at internal addresses (the
    /// simulator in tests and local runs).
    pub fn validate(
        self,
        merchant_id: &str,
        now: i64,
        rules: Option<&dyn ConfigRules>,
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
        if rules.is_none() {
            v.add("provider", "must be PROVIDER_PAYMENTWALL, or a provider named in credentials.provider");
        }
        if self.mode.is_none() {
            v.add("mode", "must be CHANNEL_MODE_TEST or CHANNEL_MODE_LIVE");
        }
        let config = match (rules, self.config) {
            (Some(rules), None) => {
                v.add(rules.name(), format!("is required for a {} channel", rules.display_name()));
                None
            }
            (Some(rules), Some(given)) => {
                let prefix = field_prefix(rules.name());
                let ctx = ConfigContext { field_prefix: &prefix, allow_internal_targets };
                Some(rules.check_config(given, &ctx, &mut v))
            }
            (None, _) => None,
        };
        v.check()?;
        // All `None`s above added a violation, so these are present.
        let (Some(rules), Some(mode), Some(config)) = (rules, self.mode, config) else {
            unreachable!("validated above")
        };
        Ok(Channel {
            channel_key,
            merchant_id: merchant_id.to_owned(),
            // The caller's to set when the creator is not who uses it.
            owner_id: merchant_id.to_owned(),
            name: self.name,
            provider: rules.name().to_owned(),
            mode,
            config,
            version: 1,
            created_at: now,
            updated_at: now,
            disabled_at: None,
        })
    }
}
