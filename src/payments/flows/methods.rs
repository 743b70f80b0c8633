//! ListPaymentMethods: the provider's payment methods for a country, cached per channel version
//! and country (the list changes rarely, and every checkout page may ask for it).

use std::{sync::Arc, time::Duration};

use moka::future::Cache;

use crate::payments::{
    PaymentError, Providers,
    provider::{PaymentMethod, ProviderError},
};
use crate::{
    channels::{ChannelError, Channels},
    merchants::Caller,
    validation::{self, InvalidArgument, Violations},
};

#[derive(Clone)]
pub struct PaymentMethods {
    cache: Cache<(String, i64, String), Arc<Vec<PaymentMethod>>>,
}

impl PaymentMethods {
    pub fn new(ttl: Duration) -> Self {
        Self { cache: Cache::builder().max_capacity(10_000).time_to_live(ttl).build() }
    }

    pub async fn list(
        &self,
        channels: &Channels,
        providers: &Providers,
        caller: &Caller,
        channel_key: &str,
        country_code: &str,
    ) -> Result<Arc<Vec<PaymentMethod>>, PaymentError> {
        let mut v = Violations::default();
        validation::identifier(&mut v, "channel_key", channel_key, validation::CHANNEL_KEY);
        if !(country_code.len() == 2 && country_code.bytes().all(|b| b.is_ascii_uppercase())) {
            v.add("country_code", "must be two upper-case letters (ISO 3166-1 alpha-2)");
        }
        v.check()?;
        let channel = match channels.for_caller(caller, channel_key).await {
            Ok(channel) => channel,
            Err(ChannelError::NotFound) => {
                return Err(InvalidArgument::single("channel_key", "no channel with this key").into());
            }
            Err(e) => return Err(e.into()),
        };
        let key = (channel.channel_key.clone(), channel.version, country_code.to_owned());
        let loaded = self
            .cache
            .try_get_with(key, async {
                providers.for_channel(&channel).payment_methods(&channel, country_code).await.map(Arc::new)
            })
            .await;
        // A shared load's error is shared too: rebuild one of the same kind for this caller.
        loaded.map_err(|e: Arc<ProviderError>| match &*e {
            ProviderError::Refused(m) => ProviderError::Refused(m.clone()).into(),
            ProviderError::Unreachable(d) => ProviderError::Unreachable(d.clone()).into(),
            ProviderError::BadAnswer(d) => ProviderError::BadAnswer(d.clone()).into(),
            ProviderError::Unsupported(d) => ProviderError::Unsupported(d.clone()).into(),
        })
    }
}
