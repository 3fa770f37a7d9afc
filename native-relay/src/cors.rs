//! CORS for the node's signed-request APIs (`/api/v1/consent`, `/api/v1/data`,
//! `/api/v1/identity/…`, `/api/v1/audit/…`), so that a page on any site that embeds the
//! script tag can use a node elsewhere: every one of these requests is authenticated by the
//! page key's signature inside it (or is public), never by cookies, so any origin may send
//! them and none gets credentials. Preflights are answered here, bounded to `POST`/`GET`
//! and the `content-type` header.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

const PREFIXES: [&str; 4] = [
    "/api/v1/consent",
    "/api/v1/data",
    "/api/v1/identity/",
    "/api/v1/audit/",
];

fn covered(path: &str) -> bool {
    PREFIXES.iter().any(|p| path.starts_with(p))
}

/// The middleware.
pub async fn signed_apis(req: Request, next: Next) -> Response {
    if !covered(req.uri().path()) {
        return next.run(req).await;
    }
    let mut res = if req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(req).await
    };
    res.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::covered;

    #[test]
    fn only_the_signed_request_apis_are_covered() {
        for p in [
            "/api/v1/consent",
            "/api/v1/data",
            "/api/v1/identity/passkey/link",
            "/api/v1/audit/checkpoint",
        ] {
            assert!(covered(p), "{p}");
        }
        for p in [
            "/",
            "/api/v1/state",
            "/v1/chat/completions",
            "/api/v1/identityx",
            "/metrics",
        ] {
            assert!(!covered(p), "{p}");
        }
    }
}
