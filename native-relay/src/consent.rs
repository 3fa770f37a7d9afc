//! `POST /api/v1/consent`: a visitor's consent record, signed with their own key
//! (`kwaainet_p2p::consent`), checked (signature by its `did:key`, shape, age, Global
//! Privacy Control) and written to the node's audit log as one `consent` entry per purpose,
//! the visitor named only by a salted commitment to their did:key. Answers 202 with what was
//! recorded; a bad record is a 400 (403 for a signature that does not verify) and records
//! nothing. Bodies of at most 8 KiB, 30 records a minute per address.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::to_bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kwaainet_api::guard::{Client, RateLimit};
use kwaainet_audit::{Decision, Entry, Label, Op};
use kwaainet_p2p::consent::{ConsentError, GPC_DENIES, SignedConsent, verify};
use kwaainet_storage::{Acl, FileStore, StorageProvider};
use serde_json::json;

use crate::audit::Recorder;

/// The largest body accepted.
const MAX_BODY: usize = 8 * 1024;

struct ConsentState {
    recorder: Recorder,
    limits: RateLimit,
    /// Where the signed records are kept, each a blob its subject owns (what their export
    /// returns and their erasure deletes).
    store: Option<Arc<FileStore>>,
}

/// The route, recording through `recorder`.
pub fn router(recorder: Recorder, store: Option<Arc<FileStore>>) -> Router {
    let state = Arc::new(ConsentState {
        recorder,
        limits: RateLimit::new(30, 10),
        store,
    });
    Router::new()
        .route("/api/v1/consent", post(record))
        .with_state(state)
}

fn answer(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

async fn record(State(st): State<Arc<ConsentState>>, req: Request) -> Response {
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |c| c.0.ip());
    if st.limits.take(Client::Addr(addr)).is_err() {
        return answer(
            StatusCode::TOO_MANY_REQUESTS,
            "too many consent records: slow down",
        );
    }
    let Ok(body) = to_bytes(req.into_body(), MAX_BODY).await else {
        return answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a consent record is at most 8 KiB",
        );
    };
    let signed: SignedConsent = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                format!("not a signed consent record: {e}"),
            );
        }
    };
    let now = crate::audit::now_ms();
    let r = match verify(&signed, now) {
        Ok(r) => r,
        Err(e @ ConsentError::Signature) => return answer(StatusCode::FORBIDDEN, e),
        Err(e) => return answer(StatusCode::BAD_REQUEST, e),
    };
    let mut entries = Vec::new();
    for (purpose, &granted) in &r.purposes {
        let mut e = Entry::new(now, Op::Consent);
        let Ok(label) = Label::new(purpose.as_str()) else {
            return answer(StatusCode::BAD_REQUEST, "bad purpose");
        };
        e.purpose = Some(label);
        e.decision = Some(if granted {
            Decision::Allow
        } else {
            Decision::Deny
        });
        let reason = if r.gpc && GPC_DENIES.contains(&purpose.as_str()) {
            "gpc"
        } else if granted {
            "given"
        } else {
            "refused"
        };
        e.reason = Label::new(reason).ok();
        entries.push(e);
    }
    if let Some(store) = &st.store {
        let bytes = serde_json::to_vec(&signed).unwrap_or_default();
        if let Err(e) = store.store(bytes, &Acl::private(&r.subject)).await {
            return answer(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("the consent record could not be kept: {e}"),
            );
        }
    }
    let n = entries.len();
    if !st.recorder.record(&r.subject, entries) {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log is busy: try again",
        );
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "recorded": n, "subject": r.subject, "gpc": r.gpc })),
    )
        .into_response()
}
