//! Authentication as a tower layer: every RPC needs `authorization: Bearer <api key>`, except
//! health checks and reflection, which load balancers and `grpcurl` call without credentials, and
//! the admin service, which needs the admin token instead.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::{merchants, store::Db};

const PUBLIC_PREFIXES: [&str; 3] = ["/grpc.health.v1.Health/", "/grpc.reflection.v1.", "/grpc.reflection.v1alpha."];
const ADMIN_PREFIX: &str = "/paygate.v1.MerchantService/";

#[derive(Clone)]
pub struct AuthLayer {
    db: Db,
    admin_token: Option<Arc<SecretString>>,
}

impl AuthLayer {
    pub fn new(db: Db, admin_token: Option<SecretString>) -> Self {
        Self { db, admin_token: admin_token.filter(|t| !t.expose_secret().is_empty()).map(Arc::new) }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, db: self.db.clone(), admin_token: self.admin_token.clone() }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    db: Db,
    admin_token: Option<Arc<SecretString>>,
}

fn admin_check(expected: Option<&SecretString>, authorization: Option<&str>) -> Result<(), Status> {
    let Some(expected) = expected else {
        return Err(Status::permission_denied("admin RPCs are disabled: set PAYGATE_ADMIN_TOKEN"));
    };
    let token = merchants::bearer_token(authorization).map_err(Status::from)?;
    if bool::from(token.as_bytes().ct_eq(expected.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(Status::unauthenticated("invalid admin token"))
    }
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
        let db = self.db.clone();
        let admin_token = self.admin_token.clone();
        Box::pin(async move {
            let path = request.uri().path();
            if PUBLIC_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
                return inner.call(request).await;
            }
            let authorization = request.headers().get("authorization").and_then(|v| v.to_str().ok());
            if path.starts_with(ADMIN_PREFIX) {
                return match admin_check(admin_token.as_deref(), authorization) {
                    Ok(()) => inner.call(request).await,
                    Err(status) => Ok(status.into_http()),
                };
            }
            match merchants::authenticate(&db, authorization).await {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(err) => Ok(Status::from(err).into_http()),
            }
        })
    }
}
