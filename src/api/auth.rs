//! Authentication as a tower layer: every RPC needs `authorization: Bearer <api key>`, except
//! health checks and reflection, which load balancers and `grpcurl` call without credentials.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::{merchants, store::Db};

const PUBLIC_PREFIXES: [&str; 3] = ["/grpc.health.v1.Health/", "/grpc.reflection.v1.", "/grpc.reflection.v1alpha."];

#[derive(Clone)]
pub struct AuthLayer {
    db: Db,
}

impl AuthLayer {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, db: self.db.clone() }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    db: Db,
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
        Box::pin(async move {
            let path = request.uri().path();
            if PUBLIC_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
                return inner.call(request).await;
            }
            let authorization = request.headers().get("authorization").and_then(|v| v.to_str().ok());
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
