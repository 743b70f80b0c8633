//! A channel's credentials belong to its provider: channels store them tagged with the provider's
//! name (settings as JSON, each secret encrypted) and hand them back to the provider, which alone
//! reads inside them. What channels need from a provider to accept a config is `ConfigRules`, the
//! channel half of the provider port (`payments::provider` holds the rest).

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::validation::Violations;

/// A channel's provider-owned config. `Debug` shows secrets as `[REDACTED]`.
#[derive(Debug, Clone, Default)]
pub struct ProviderConfig {
    /// The provider's settings, in its own shape (a JSON object; stored as given after checks).
    pub settings: Value,
    /// The provider's secrets by name; encrypted at rest, never in a cache in the clear.
    pub secrets: BTreeMap<String, SecretString>,
}

impl ProviderConfig {
    /// A text setting, or "" when absent or not text.
    pub fn setting_text(&self, name: &str) -> &str {
        self.settings.get(name).and_then(Value::as_str).unwrap_or_default()
    }

    pub fn secret(&self, name: &str) -> Option<&SecretString> {
        self.secrets.get(name)
    }

    /// Which of `fields` are given with a value, as `{prefix}{name}`, for the audit trail (never
    /// values).
    pub fn given_fields(&self, prefix: &str, fields: &[ConfigField]) -> Vec<String> {
        let given = |f: &&ConfigField| match f.secret {
            true => self.secrets.get(f.name).is_some_and(|s| !s.expose_secret().is_empty()),
            false => self.settings.get(f.name).is_some_and(|v| !is_empty(v)),
        };
        fields.iter().filter(given).map(|f| format!("{prefix}{}", f.name)).collect()
    }

    /// Sets `field` (a setting or a secret, as `rules` says) to its value in `from`.
    pub fn take_field(&mut self, from: &ProviderConfig, field: &ConfigField) {
        if field.secret {
            let value = from.secrets.get(field.name).cloned().unwrap_or_else(|| SecretString::from(""));
            self.secrets.insert(field.name.to_owned(), value);
        } else {
            let value = from.settings.get(field.name).cloned().unwrap_or(Value::Null);
            if !self.settings.is_object() {
                self.settings = Value::Object(Default::default());
            }
            if let Value::Object(map) = &mut self.settings {
                map.insert(field.name.to_owned(), value);
            }
        }
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Number(n) => n.as_u64() == Some(0),
        _ => false,
    }
}

/// A setting any provider's config may carry: the channel confirms every payment paid as a
/// digital delivery, by itself (`payments::flows::delivery`).
pub const CONFIRM_DIGITAL_DELIVERY: &str = "confirm_digital_delivery";

/// One field of a provider's config, as an update mask names it (`{provider}.{name}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigField {
    pub name: &'static str,
    pub secret: bool,
}

/// What checking a config may depend on besides the config.
#[derive(Debug, Clone, Copy)]
pub struct ConfigContext<'a> {
    /// Prefixed to every field a violation names (e.g. "paymentwall.").
    pub field_prefix: &'a str,
    /// Whether the config may point at internal addresses (the simulator in tests and local runs).
    pub allow_internal_targets: bool,
}

/// A provider's rules for its channels' configs.
pub trait ConfigRules: Send + Sync {
    /// The provider's name: the tag on its channels and its segment in `/callbacks/{name}/...`.
    fn name(&self) -> &'static str;

    /// How people write the provider's name.
    fn display_name(&self) -> &'static str;

    /// Every field of its config, in the order an error lists them.
    fn config_fields(&self) -> &'static [ConfigField];

    /// Checks a config as given and fills defaults; every problem is added to `v` under
    /// `{field_prefix}{field}`. What it returns is stored only if `v` stays empty.
    fn check_config(&self, given: ProviderConfig, ctx: &ConfigContext<'_>, v: &mut Violations) -> ProviderConfig;

    /// The path the provider must be told to send this channel's callbacks to.
    fn callback_path(&self, channel_key: &str) -> String {
        generic_callback_path(self.name(), channel_key)
    }
}

/// `/callbacks/{provider}/{channel_key}`: the callback URL every provider can use.
pub fn generic_callback_path(provider: &str, channel_key: &str) -> String {
    format!("/callbacks/{provider}/{channel_key}")
}
