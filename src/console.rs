//! The operator console: static assets (built from `console/` by `scripts/build-console`, committed
//! in `console/dist/`) embedded in the binary and served at `/console` on the gRPC port. The page
//! calls the gRPC API through gRPC-Web from the same origin, so it needs no CORS.
//!
//! A layer in front of the gRPC services answers `GET`/`HEAD` under `/console` from a fixed table
//! and hands everything else on untouched. Nothing is read from disk, so no path can reach a file
//! outside the table.

use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{Either, Ready, ready};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tonic::body::Body;
use tower::{Layer, Service};

/// Where the console lives on the gRPC port.
pub const PATH: &str = "/console";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const INDEX: Asset = Asset {
    path: "/console/",
    content_type: "text/html; charset=utf-8",
    bytes: include_bytes!("../console/dist/index.html"),
};

const ASSETS: &[Asset] = &[
    INDEX,
    Asset {
        path: "/console/app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../console/dist/app.js"),
    },
    Asset {
        path: "/console/app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../console/dist/app.css"),
    },
];

/// Only the console's own files, only from its own origin; no framing (clickjacking), no referrer
/// (a payment id in the URL stays here).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The answer for a request under `/console`, or `None` when the request is not the console's.
fn answer(method: &Method, path: &str) -> Option<Response<Body>> {
    if path != PATH && !path.starts_with("/console/") {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        return Some(plain(StatusCode::METHOD_NOT_ALLOWED, "the console answers GET and HEAD only\n"));
    }
    // `/console` and `/console/` are the page; the page names its assets by absolute path.
    let wanted = if path == PATH { INDEX.path } else { path };
    let Some(asset) = ASSETS.iter().find(|a| a.path == wanted) else {
        return Some(plain(StatusCode::NOT_FOUND, "no such console page\n"));
    };
    let body = if method == Method::HEAD { Body::empty() } else { full(asset.bytes) };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(asset.bytes.len()));
    // The assets change with the binary: always revalidate (they are small).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Some(response)
}

fn full(bytes: &'static [u8]) -> Body {
    Body::new(http_body_util::Full::new(Bytes::from_static(bytes)))
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text.as_bytes()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Serves the console in front of the gRPC services.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsoleLayer;

impl<S> Layer<S> for ConsoleLayer {
    type Service = Console<S>;

    fn layer(&self, inner: S) -> Console<S> {
        Console { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Console<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Console<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match answer(request.method(), request.uri().path()) {
            Some(response) => Either::Left(ready(Ok(response))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(method: Method, path: &str) -> Option<StatusCode> {
        answer(&method, path).map(|r| r.status())
    }

    #[test]
    fn serves_its_assets_with_their_types() {
        for (path, kind) in [
            ("/console", "text/html"),
            ("/console/", "text/html"),
            ("/console/app.js", "text/javascript"),
            ("/console/app.css", "text/css"),
        ] {
            let response = answer(&Method::GET, path).unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
            assert!(content_type.starts_with(kind), "{path}: {content_type}");
            assert!(response.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        }
    }

    #[test]
    fn leaves_other_paths_to_the_grpc_services() {
        for path in
            ["/paygate.v1.PaymentService/GetPayment", "/", "/consoles", "/console.js", "/grpc.health.v1.Health/Check"]
        {
            assert!(answer(&Method::POST, path).is_none(), "{path}");
            assert!(answer(&Method::GET, path).is_none(), "{path}");
        }
    }

    #[test]
    fn nothing_outside_the_table() {
        for path in [
            "/console/../Cargo.toml",
            "/console/%2e%2e/Cargo.toml",
            "/console/..%2fCargo.toml",
            "/console//etc/passwd",
            "/console/app.js/",
            "/console/dist/app.js",
            "/console/index.html/../app.js",
        ] {
            assert_eq!(status(Method::GET, path), Some(StatusCode::NOT_FOUND), "{path}");
        }
        assert_eq!(status(Method::POST, "/console/"), Some(StatusCode::METHOD_NOT_ALLOWED));
        assert_eq!(status(Method::HEAD, "/console/app.js"), Some(StatusCode::OK));
    }
}
