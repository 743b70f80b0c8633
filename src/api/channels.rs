//! `paygate.v1.ChannelService`.

use secrecy::SecretString;
use tonic::{Request, Response, Status};

use super::{caller, convert, page_size};
use crate::{
    channels::{self, Channel, ChannelPatch, Channels, Deleted, config::ProviderConfig, repo::ListFilter},
    proto::v1::{self as pb, channel_service_server::ChannelService},
    providers::paymentwall::config as paymentwall,
    validation::{self, Violations},
};

pub struct ChannelsApi {
    channels: Channels,
}

impl ChannelsApi {
    pub fn new(channels: Channels) -> Self {
        Self { channels }
    }

    fn answer(&self, channel: &Channel) -> pb::Channel {
        convert::channel(channel, self.channels.callback_path(channel))
    }
}

fn paymentwall_config(pw: pb::PaymentwallCredentials) -> ProviderConfig {
    paymentwall::Given {
        project_key: pw.project_key,
        secret_key: SecretString::from(pw.secret_key),
        widget: pw.widget,
        sign_version: pw.sign_version,
        pingback_allowlist: pw.pingback_allowlist,
        api_base_url: pw.api_base_url,
        confirm_digital_delivery: pw.confirm_digital_delivery,
    }
    .into_config()
}

/// The generic form of credentials: the provider's name and its config. The settings must be a
/// JSON object; what is inside is the provider's to check.
fn generic_config(c: pb::ProviderCredentials, v: &mut Violations) -> (String, ProviderConfig) {
    let settings = match c.settings_json.trim() {
        "" => serde_json::Value::Object(Default::default()),
        text => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) if value.is_object() => value,
            Ok(_) => {
                v.add("credentials.settings_json", "must be a JSON object");
                serde_json::Value::Null
            }
            Err(e) => {
                v.add("credentials.settings_json", format!("is not JSON: {e}"));
                serde_json::Value::Null
            }
        },
    };
    if validation::count(v, "credentials.secrets", c.secrets.len(), MAX_SECRETS) {
        for name in c.secrets.keys() {
            validation::identifier(v, "credentials.secrets", name, validation::PARAMETER_NAME);
        }
    }
    let secrets = c.secrets.into_iter().map(|(name, value)| (name, SecretString::from(value))).collect();
    (c.provider, ProviderConfig { settings, secrets })
}

/// More secrets than any provider needs is a mistake, not a config.
const MAX_SECRETS: usize = 16;

fn required_key(key: &str) -> Result<(), Status> {
    let mut v = Violations::default();
    validation::identifier(&mut v, "channel_key", key, validation::CHANNEL_KEY);
    Ok(v.check()?)
}

#[tonic::async_trait]
impl ChannelService for ChannelsApi {
    async fn create_channel(
        &self,
        request: Request<pb::CreateChannelRequest>,
    ) -> Result<Response<pb::Channel>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let provider = convert::provider_from_proto(r.provider);
        if provider.is_none() && r.provider != 0 {
            v.add("provider", format!("unknown provider {}", r.provider));
        }
        validation::optional_identifier(&mut v, "sub_merchant_id", &r.sub_merchant_id, validation::ID);
        let (provider, config) = match r.credentials {
            Some(_) if r.provider != 0 || r.paymentwall.is_some() => {
                v.add("credentials", "give either credentials or provider and paymentwall, not both");
                (String::new(), None)
            }
            Some(generic) => {
                let (name, config) = generic_config(generic, &mut v);
                // Bounded before it is quoted: the name can be anything a client sent.
                if validation::identifier(&mut v, "credentials.provider", &name, validation::PARAMETER_NAME)
                    && self.channels.rules(&name).is_none()
                {
                    v.add("credentials.provider", format!("{name:?} is not a provider paygate runs"));
                }
                (name, Some(config))
            }
            None => (provider.unwrap_or_default().to_owned(), r.paymentwall.map(paymentwall_config)),
        };
        v.check()?;
        let new = channels::NewChannel {
            channel_key: r.channel_key,
            name: r.name,
            provider,
            mode: convert::mode_from_proto(r.mode),
            config,
            sub_merchant_id: r.sub_merchant_id,
        };
        let channel = self.channels.create(&caller, new).await?;
        tracing::info!(channel_key = %channel.channel_key, mode = channel.mode.as_str(), "channel created");
        Ok(Response::new(self.answer(&channel)))
    }

    async fn get_channel(&self, request: Request<pb::GetChannelRequest>) -> Result<Response<pb::Channel>, Status> {
        let caller = caller(&request)?;
        let key = &request.get_ref().channel_key;
        required_key(key)?;
        let channel = self.channels.get(&caller, key).await?;
        Ok(Response::new(self.answer(&channel)))
    }

    async fn list_channels(
        &self,
        request: Request<pb::ListChannelsRequest>,
    ) -> Result<Response<pb::ListChannelsResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let mode = convert::mode_from_proto(r.mode);
        if mode.is_none() && r.mode != 0 {
            v.add("mode", "is not a channel mode");
        }
        let mut provider = convert::provider_from_proto(r.provider).map(str::to_owned);
        if provider.is_none() && r.provider != 0 {
            v.add("provider", "is not a provider");
        }
        if !r.provider_name.is_empty() {
            validation::identifier(&mut v, "provider_name", &r.provider_name, validation::PARAMETER_NAME);
            provider = Some(r.provider_name);
        }
        validation::optional_identifier(&mut v, "sub_merchant_id", &r.sub_merchant_id, validation::ID);
        let after_key = match convert::page_token::decode_as(&r.page_token, validation::CHANNEL_KEY) {
            Ok(after) => after,
            Err(e) => {
                v.add("page_token", e.to_string());
                None
            }
        };
        v.check()?;
        let limit = page_size(r.page_size);
        let filter = ListFilter {
            mode,
            provider,
            sub_merchant_id: Some(r.sub_merchant_id).filter(|s| !s.is_empty()),
            include_disabled: r.include_disabled,
            after_key,
            limit: limit + 1,
        };
        let channels = self.channels.list(&caller, &filter).await?;
        let (channels, next_page_token) = super::page(channels, limit, |c| c.channel_key.clone());
        Ok(Response::new(pb::ListChannelsResponse {
            channels: channels.iter().map(|c| self.answer(c)).collect(),
            next_page_token,
        }))
    }

    async fn update_channel(
        &self,
        request: Request<pb::UpdateChannelRequest>,
    ) -> Result<Response<pb::Channel>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let update = r.channel.unwrap_or_default();
        let mut v = Violations::default();
        validation::identifier(&mut v, "channel_key", &r.channel_key, validation::CHANNEL_KEY);
        // Paths are echoed in the answer when unknown, so they are bounded first.
        if validation::count(&mut v, "update_mask.paths", paths.len(), validation::MAX_MASK_PATHS) {
            for (i, path) in paths.iter().enumerate() {
                validation::text(&mut v, format!("update_mask.paths[{i}]"), path, validation::MAX_ENTRY);
            }
        }
        validation::optional_identifier(&mut v, "sub_merchant_id", &update.sub_merchant_id, validation::ID);
        let patch = ChannelPatch {
            paths,
            name: update.name,
            mode: convert::mode_from_proto(update.mode),
            config: match (update.credentials, update.paymentwall) {
                (Some(_), Some(_)) => {
                    v.add("credentials", "give either credentials or paymentwall, not both");
                    ProviderConfig::default()
                }
                (Some(generic), None) => generic_config(generic, &mut v).1,
                (None, Some(pw)) => paymentwall_config(pw),
                (None, None) => ProviderConfig::default(),
            },
            sub_merchant_id: update.sub_merchant_id,
        };
        v.check()?;
        let fields = patch.paths.join(",");
        let channel = self.channels.update(&caller, &r.channel_key, patch).await?;
        tracing::info!(channel_key = %channel.channel_key, version = channel.version, %fields, "channel updated");
        Ok(Response::new(self.answer(&channel)))
    }

    async fn delete_channel(
        &self,
        request: Request<pb::DeleteChannelRequest>,
    ) -> Result<Response<pb::DeleteChannelResponse>, Status> {
        let caller = caller(&request)?;
        let key = &request.get_ref().channel_key;
        required_key(key)?;
        let deleted = self.channels.delete(&caller, key).await?;
        tracing::info!(channel_key = %key, erased = deleted == Deleted::Erased, "channel deleted");
        Ok(Response::new(pb::DeleteChannelResponse { erased: deleted == Deleted::Erased }))
    }
}
