//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the
//! HTTP status OpenAI (and vLLM, llama.cpp's server) use for each kind.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, `authentication_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A stable code (`context_length_exceeded`, `model_not_found`, ...).
    pub code: Option<&'static str>,
    /// `Retry-After` for 429/503.
    pub retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: a malformed body or a bad parameter.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            param: param.map(str::to_owned),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 400: a feature this server does not offer (tools, images, ...).
    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self {
            code: Some("unsupported_parameter"),
            ..Self::invalid(Some(param), message)
        }
    }

    /// 400 `context_length_exceeded`.
    pub fn context_length(needed: usize, max: usize) -> Self {
        Self {
            code: Some("context_length_exceeded"),
            ..Self::invalid(
                Some("messages"),
                format!(
                    "This model's maximum context length is {max} tokens. However, you requested {needed} tokens (prompt + max_tokens). Please reduce the length of the messages or max_tokens."
                ),
            )
        }
    }

    /// 401: no key, or a wrong one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
        }
    }

    /// 404: an unknown model or route.
    pub fn not_found(param: Option<&str>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: param.map(str::to_owned),
            code: Some(code),
            ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
        }
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self {
            code: Some("request_too_large"),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the request body is larger than {limit} bytes"),
            )
        }
    }

    /// 429: this key sends too fast.
    pub fn rate_limited(retry_after: Duration) -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "too many requests for this key: slow down",
            )
        }
    }

    /// 429: every slot is busy and the queue is full.
    pub fn overloaded(retry_after: Duration) -> Self {
        Self {
            code: Some("server_overloaded"),
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "server_error",
                "the server is at capacity (every slot busy, the queue full): retry later",
            )
        }
    }

    /// 503: the backend cannot serve now (no swarm route, waited too long in the queue,
    /// shutting down).
    pub fn unavailable(message: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            code: Some("service_unavailable"),
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
        }
    }

    /// 500: a fault of ours (never bad input).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body())).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        res
    }
}

/// An engine error while serving a request: bad input the engine found (a token outside
/// the vocabulary, a context overflow) is the client's, anything else ours.
impl From<kwaainet_core::Error> for ApiError {
    fn from(e: kwaainet_core::Error) -> Self {
        use kwaainet_core::Error as E;
        match e {
            E::ContextFull { needed, max } => Self::context_length(needed, max),
            E::InvalidArgument(m) => Self::invalid(None, m),
            E::Unsupported(m) => Self::invalid(None, format!("unsupported: {m}")),
            other => Self::internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bodies_have_openai_shape_and_retry_after() {
        let e = ApiError::context_length(9000, 2048);
        let b = e.body();
        assert_eq!(b["error"]["code"], "context_length_exceeded");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["param"], "messages");
        assert!(b["error"]["message"].as_str().unwrap().contains("2048"));
        let r = ApiError::overloaded(Duration::from_millis(200)).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let b = ApiError::unauthorized("no").body();
        assert!(b["error"]["param"].is_null());
    }
}
