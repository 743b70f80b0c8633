//! Authentication as a tower layer. Every RPC needs `authorization: Bearer <credential>`, except
//! health checks and reflection, which load balancers and `grpcurl` call without credentials.
//! The credential is the admin token (MerchantService only) or a merchant's API key, which must be
//! live, used from an address its merchant's allowlist admits, and within its own rate limit and
//! its top-level merchant's. An address whose credentials keep failing is refused before any
//! lookup for a while (a key already verified in the cache still works from it).

use std::{
    net::{IpAddr, Ipv4Addr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tonic::{Status, body::Body, transport::server::TcpConnectInfo};
use tower::{Layer, Service};

use crate::{
    merchants::{
        self, AuthError, Caller, Merchants, Principal,
        client_tokens::{self, PaymentGrant},
    },
    net::client_ip,
    ratelimit::{FailureLimit, Limiter},
    secrets::MasterKeys,
    store::now_ms,
};

const PUBLIC_PREFIXES: [&str; 3] = ["/grpc.health.v1.Health/", "/grpc.reflection.v1.", "/grpc.reflection.v1alpha."];
const MERCHANT_SERVICE: &str = "/paygate.v1.MerchantService/";
/// All a payment client token may call; the handlers hold it to its own payment.
const CLIENT_TOKEN_PATHS: [&str; 2] =
    ["/paygate.v1.PaymentService/GetPayment", "/paygate.v1.PaymentService/WatchPayments"];

/// What the layer needs, shared by every connection.
pub struct AuthSettings {
    pub merchants: Merchants,
    pub admin_token: Option<SecretString>,
    pub trusted_proxies: Vec<IpNet>,
    pub per_key_limit: Option<Limiter>,
    /// Per top-level merchant, all its keys and its sub-merchants' together.
    pub per_merchant_limit: Option<Limiter>,
    /// Failed authentications per source address.
    pub failures: Option<FailureLimit>,
    /// Verifies payment client tokens.
    pub keys: Arc<MasterKeys>,
    /// The longest a payment client token may live: one that claims longer is refused.
    pub client_token_max_ttl_ms: i64,
}

#[derive(Clone)]
pub struct AuthLayer {
    settings: Arc<AuthSettings>,
}

impl AuthLayer {
    pub fn new(mut settings: AuthSettings) -> Self {
        settings.admin_token = settings.admin_token.filter(|t| !t.expose_secret().is_empty());
        Self { settings: Arc::new(settings) }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, settings: self.settings.clone() }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    settings: Arc<AuthSettings>,
}

impl AuthSettings {
    fn is_admin_token(&self, token: &str) -> bool {
        self.admin_token.as_ref().is_some_and(|t| bool::from(token.as_bytes().ct_eq(t.expose_secret().as_bytes())))
    }

    /// Who is calling, or why not. An address out of failures is refused before any lookup, but for
    /// an API key the cache already holds; each failure that could be a guess counts.
    async fn principal(
        &self,
        path: &str,
        authorization: Option<&str>,
        address: IpAddr,
    ) -> Result<Authenticated, AuthError> {
        let Some(failures) = &self.failures else { return self.authenticate(path, authorization, address).await };
        let source = address.to_string();
        if let Some(retry_after) = failures.blocked(&source).await {
            let cached = match merchants::bearer_token(authorization) {
                Ok(token) => self.merchants.key_cache().authenticate_cached(token, address).await,
                Err(_) => None,
            };
            return match cached {
                Some(Ok(caller)) => self.admit(caller).await,
                _ => Err(AuthError::TooManyFailures { retry_after }),
            };
        }
        let result = self.authenticate(path, authorization, address).await;
        if let Err(err) = &result
            && err.is_guess()
            && let Err(retry_after) = failures.record(&source).await
        {
            return Err(AuthError::TooManyFailures { retry_after });
        }
        result
    }

    async fn authenticate(
        &self,
        path: &str,
        authorization: Option<&str>,
        address: IpAddr,
    ) -> Result<Authenticated, AuthError> {
        let token = merchants::bearer_token(authorization)?;
        if token.starts_with(client_tokens::PREFIX) {
            return self.client(path, token).await.map(|grant| Authenticated::Client(grant, address));
        }
        if self.is_admin_token(token) {
            return if path.starts_with(MERCHANT_SERVICE) {
                Ok(Authenticated::Principal(Principal::Admin { address }))
            } else {
                Err(AuthError::AdminTokenNotAKey)
            };
        }
        let caller = self.merchants.authenticate(token, address).await?;
        self.admit(caller).await
    }

    /// A verified key's call, within the key's rate limit and its top-level merchant's.
    async fn admit(&self, caller: Caller) -> Result<Authenticated, AuthError> {
        if let Some(limiter) = &self.per_key_limit
            && let Err(retry_after) = limiter.check(&caller.key_id).await
        {
            return Err(AuthError::RateLimited { key_id: caller.key_id, retry_after });
        }
        if let Some(limiter) = &self.per_merchant_limit
            && let Err(retry_after) = limiter.check(&caller.top_merchant_id).await
        {
            return Err(AuthError::MerchantRateLimited { merchant_id: caller.top_merchant_id, retry_after });
        }
        Ok(Authenticated::Principal(Principal::Merchant(caller)))
    }

    /// A payment client token: verified, on one of its paths, within its payment's rate limit (it
    /// lives in a buyer's browser), and its issuing key still live (an outage refuses it).
    async fn client(&self, path: &str, token: &str) -> Result<PaymentGrant, AuthError> {
        let grant = client_tokens::verify(&self.keys, token, now_ms(), self.client_token_max_ttl_ms)?;
        if !CLIENT_TOKEN_PATHS.contains(&path) {
            return Err(AuthError::ClientTokenNotAllowed(path.trim_start_matches('/').to_owned()));
        }
        if let Some(limiter) = &self.per_key_limit
            && let Err(retry_after) = limiter.check(&format!("pct:{}", grant.payment_id)).await
        {
            return Err(AuthError::RateLimited { key_id: grant.key_id, retry_after });
        }
        self.merchants.key_cache().check_live(&grant.key_id).await?;
        Ok(grant)
    }
}

/// A credential that checked out.
enum Authenticated {
    /// The admin token or a merchant's API key.
    Principal(Principal),
    /// A payment client token, from this address.
    Client(PaymentGrant, IpAddr),
}

impl<S, B> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The readied service goes into the future; a fresh clone stays behind (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let settings = self.settings.clone();
        Box::pin(async move {
            let path = request.uri().path();
            if PUBLIC_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
                return inner.call(request).await;
            }
            let peer = request
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
            let address = client_ip::resolve(peer, request.headers(), &settings.trusted_proxies);
            let authorization = request.headers().get("authorization").and_then(|v| v.to_str().ok());
            match settings.principal(path, authorization, address).await {
                Ok(Authenticated::Principal(principal)) => {
                    if let Principal::Merchant(caller) = &principal {
                        request.extensions_mut().insert(caller.clone());
                    }
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                // Acts for the payment's merchant alone, and the grant says for what.
                Ok(Authenticated::Client(grant, address)) => {
                    request.extensions_mut().insert(client_caller(&grant, address));
                    request.extensions_mut().insert(grant);
                    inner.call(request).await
                }
                Err(err) => Ok(Status::from(err).into_http()),
            }
        })
    }
}

fn client_caller(grant: &PaymentGrant, address: IpAddr) -> Caller {
    Caller {
        merchant_id: grant.merchant_id.clone(),
        top_merchant_id: grant.merchant_id.clone(),
        scope: vec![grant.merchant_id.clone()],
        key_id: grant.key_id.clone(),
        address,
        // Checked live on this call, but through the cache: its stream asks the cache again.
        key_state: None,
    }
}
