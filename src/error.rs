//! The one place where module errors become answers: `tonic::Status` for gRPC callers and HTTP
//! responses for providers. Modules say what went wrong; this file decides how it is told.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    channels::ChannelError,
    ingest::{PingbackError, pingback::retry_after_secs},
    merchants::{AuthError, MerchantError},
    payments::PaymentError,
    store::StoreError,
    webhooks::WebhookError,
};

// The request-validation types live on the ground floor; re-exported for the modules that name
// them through here.
use crate::validation::InvalidArgument;

impl From<InvalidArgument> for Status {
    fn from(err: InvalidArgument) -> Self {
        let mut details = ErrorDetails::new();
        for v in err.0.iter() {
            details.add_bad_request_violation(v.field.clone(), v.description.clone());
        }
        Status::with_error_details(Code::InvalidArgument, err.to_string(), details)
    }
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %err, "database unavailable");
                Status::unavailable("database unavailable, retry later")
            }
            StoreError::InvalidValue(_) => {
                tracing::warn!(error = %err, "database refused a value");
                Status::invalid_argument("a value in the request is not acceptable (text with a NUL byte?)")
            }
            other => {
                tracing::error!(error = %other, "database error");
                Status::internal("internal storage error")
            }
        }
    }
}

impl From<ChannelError> for Status {
    fn from(err: ChannelError) -> Self {
        match err {
            ChannelError::Invalid(invalid) => invalid.into(),
            ChannelError::NotFound => Status::not_found("channel not found"),
            ChannelError::KeyTaken => Status::already_exists("channel_key: a channel with this key already exists"),
            ChannelError::Conflict => Status::aborted(err.to_string()),
            ChannelError::NotOwner { .. } => Status::permission_denied(err.to_string()),
            ChannelError::Store(store) => store.into(),
            ChannelError::Crypto(problem) | ChannelError::SecretUnreadable { error: problem, .. } => {
                tracing::error!(%problem, "channel secret cannot be decrypted");
                Status::internal("channel secret cannot be decrypted; check the master key configuration")
            }
            ChannelError::Corrupt(_) | ChannelError::WrongMasterKey { .. } => {
                tracing::error!(problem = %err, "stored channel is unreadable");
                Status::internal("stored channel is unreadable")
            }
        }
    }
}

impl From<PaymentError> for Status {
    fn from(err: PaymentError) -> Self {
        match err {
            PaymentError::Invalid(invalid) => invalid.into(),
            PaymentError::NotFound => Status::not_found("payment not found"),
            PaymentError::SubscriptionNotFound => Status::not_found("subscription not found"),
            PaymentError::MerchantUidTaken => {
                Status::already_exists("merchant_uid: a payment with this merchant_uid already exists")
            }
            PaymentError::NotRefundable(_)
            | PaymentError::NotCancellable(_)
            | PaymentError::NotDeliverable(_)
            | PaymentError::NotResolvable(_)
            | PaymentError::ProviderRefused(_) => Status::failed_precondition(err.to_string()),
            PaymentError::ProviderUnavailable(_) => Status::unavailable(err.to_string()),
            PaymentError::IdempotencyMismatch | PaymentError::IdempotencyInFlight | PaymentError::Concurrent => {
                Status::aborted(err.to_string())
            }
            PaymentError::CursorExpired(_) => Status::out_of_range(err.to_string()),
            PaymentError::SyncedRecently { retry_after } => Status::with_error_details(
                Code::ResourceExhausted,
                err.to_string(),
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            PaymentError::Channel(channel) => channel.into(),
            PaymentError::Provider(problem) => {
                tracing::error!(%problem, "provider request could not be built");
                Status::internal("provider request could not be built")
            }
            PaymentError::Store(store) => store.into(),
            PaymentError::Corrupt(what) => {
                tracing::error!(problem = %what, "stored payment is unreadable");
                Status::internal("stored payment is unreadable")
            }
        }
    }
}

impl From<MerchantError> for Status {
    fn from(err: MerchantError) -> Self {
        match err {
            MerchantError::NotFound | MerchantError::KeyNotFound => Status::not_found(err.to_string()),
            MerchantError::NestedSubMerchant(_) | MerchantError::WouldLockOut(_) => {
                Status::failed_precondition(err.to_string())
            }
            MerchantError::AdminOnly(_) => Status::permission_denied(err.to_string()),
            MerchantError::TooManyKeys { .. } => Status::resource_exhausted(err.to_string()),
            MerchantError::Invalid(invalid) => invalid.into(),
            MerchantError::Store(store) => store.into(),
        }
    }
}

impl From<WebhookError> for Status {
    fn from(err: WebhookError) -> Self {
        match err {
            WebhookError::Invalid(invalid) => invalid.into(),
            WebhookError::NotFound => Status::not_found(err.to_string()),
            WebhookError::Store(store) => store.into(),
            WebhookError::Crypto(_) | WebhookError::Corrupt(_) => {
                tracing::error!(error = %err, "webhook data unreadable");
                Status::internal("stored webhook data is unreadable")
            }
        }
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Missing
            | AuthError::Malformed
            | AuthError::UnknownKey
            | AuthError::Revoked(_)
            | AuthError::Expired(_)
            | AuthError::ClientToken(_) => Status::unauthenticated(err.to_string()),
            AuthError::AddressNotAllowed(_) | AuthError::AdminTokenNotAKey | AuthError::ClientTokenNotAllowed(_) => {
                Status::permission_denied(err.to_string())
            }
            AuthError::RateLimited { retry_after, .. }
            | AuthError::MerchantRateLimited { retry_after, .. }
            | AuthError::TooManyFailures { retry_after } => Status::with_error_details(
                Code::ResourceExhausted,
                err.to_string(),
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            AuthError::Store(store) => store.into(),
        }
    }
}

/// Paymentwall reads only "200 + body OK" as delivered; everything else is retried later, so the
/// status code tells operators (and the provider's dashboard) why, and the body says it in a line.
impl IntoResponse for PingbackError {
    fn into_response(self) -> Response {
        let status = match &self {
            PingbackError::UnknownChannel | PingbackError::UnknownProvider => StatusCode::NOT_FOUND,
            PingbackError::SourceNotAllowed(_)
            | PingbackError::BadSignature
            | PingbackError::SignatureNotAccepted(_)
            | PingbackError::TestOnLiveChannel(_) => StatusCode::FORBIDDEN,
            PingbackError::Malformed(_)
            | PingbackError::BadChannelKey(_)
            | PingbackError::Store(StoreError::InvalidValue(_)) => StatusCode::BAD_REQUEST,
            PingbackError::PaymentNotFound => StatusCode::UNPROCESSABLE_ENTITY,
            PingbackError::Store(StoreError::Unavailable(_)) | PingbackError::Timeout | PingbackError::Busy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            PingbackError::Store(_) | PingbackError::Channel(_) | PingbackError::Corrupt(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            PingbackError::RateLimited { retry_after, .. } => {
                let headers = [(http::header::RETRY_AFTER, retry_after_secs(*retry_after).to_string())];
                return (StatusCode::TOO_MANY_REQUESTS, headers, format!("{self}\n")).into_response();
            }
        };
        (status, format!("{}\n", self.public_reason())).into_response()
    }
}
