//! `paygate.v1.ChannelService`.

use secrecy::SecretString;
use tonic::{Request, Response, Status};

use super::{caller, convert, page_size};
use crate::{
    channels::{self, model::NewPaymentwall, repo},
    error::InvalidArgument,
    proto::v1::{self as pb, channel_service_server::ChannelService},
    store::{Db, now_ms},
};

pub struct ChannelsApi {
    db: Db,
}

impl ChannelsApi {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl ChannelService for ChannelsApi {
    async fn create_channel(
        &self,
        request: Request<pb::CreateChannelRequest>,
    ) -> Result<Response<pb::Channel>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let new = channels::NewChannel {
            channel_key: r.channel_key,
            name: r.name,
            provider: convert::provider_from_proto(r.provider),
            mode: convert::mode_from_proto(r.mode),
            paymentwall: r.paymentwall.map(|pw| NewPaymentwall {
                project_key: pw.project_key,
                secret_key: SecretString::from(pw.secret_key),
                widget: pw.widget,
                sign_version: pw.sign_version,
                pingback_allowlist: pw.pingback_allowlist,
                api_base_url: pw.api_base_url,
            }),
        };
        let channel = new.validate(&caller.merchant_id, now_ms()).map_err(channels::ChannelError::from)?;
        repo::insert(&self.db, &channel).await?;
        tracing::info!(channel_key = %channel.channel_key, mode = channel.mode.as_str(), "channel created");
        Ok(Response::new(convert::channel(channel)))
    }

    async fn get_channel(&self, request: Request<pb::GetChannelRequest>) -> Result<Response<pb::Channel>, Status> {
        let caller = caller(&request)?;
        let key = &request.get_ref().channel_key;
        if key.is_empty() {
            return Err(InvalidArgument::single("channel_key", "is required").into());
        }
        let channel = repo::get_for_merchant(&self.db, &caller.merchant_id, key).await?;
        Ok(Response::new(convert::channel(channel)))
    }

    async fn list_channels(
        &self,
        request: Request<pb::ListChannelsRequest>,
    ) -> Result<Response<pb::ListChannelsResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let after = convert::page_token::decode(&r.page_token)?;
        let limit = page_size(r.page_size);
        let mut channels = repo::list(&self.db, &caller.merchant_id, after.as_deref(), limit + 1).await?;
        let next_page_token = if channels.len() > limit as usize {
            channels.truncate(limit as usize);
            channels.last().map(|c| convert::page_token::encode(&c.channel_key)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListChannelsResponse {
            channels: channels.into_iter().map(convert::channel).collect(),
            next_page_token,
        }))
    }
}
