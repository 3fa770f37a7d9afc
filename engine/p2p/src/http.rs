//! The node's HTTP side (axum): health/network state, Prometheus metrics, and the demo site
//! with the CDN bundle and the model, as `demo-site/serve.mjs` serves them.
//!
//! | Path | What |
//! |---|---|
//! | `GET /api/v1/state` | [`NodeState`](crate::node::NodeState) as JSON, with `models`: the swarm's health per model ([`crate::health::ModelReport`]) |
//! | `GET /metrics` | Prometheus / OpenMetrics text: libp2p (connections, kad queries, relay, identify, ping, bytes) and `kwaainet_*` |
//! | `GET /` | `demo-site/index.html` with its placeholders filled in ([`template`]): the CDN path, the bundle's SRI hash, the model URL and SHA-256 |
//! | `GET /privacy.html` | `demo-site/privacy.html`, filled in the same way |
//! | `GET /cdn/...` | `dist/cdn/` (CORS-enabled, as a CDN would be) |
//! | `GET /models/model.gguf` | the model file |
//! | `GET /favicon.ico` | `demo-site/favicon.svg` |
//! | `GET /...` | other files of `demo-site/` |
//!
//! Static files go through tower-http's `ServeDir`/`ServeFile`: MIME types from the
//! extension (`.wasm` is `application/wasm`), `Range` requests (206/416), `..` refused.
//! Every response carries COOP `same-origin` / COEP `require-corp`: the page is cross-origin
//! isolated, which the multi-threaded CPU engine (shared memory) needs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tower_http::services::{ServeDir, ServeFile};

use crate::error::Result;
use crate::health::Monitor;
use crate::node::NodeHandle;

pub mod template;

/// A model file offered at `/models/model.gguf`.
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its lower-case hex SHA-256 (put in the page for the SDK to verify).
    pub sha256: String,
}

/// What the HTTP side serves besides the API.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// The demo site folder (`demo-site/`), if served.
    pub site_dir: Option<PathBuf>,
    /// The CDN bundle folder (`dist/cdn/`, holding `v<version>/`), if served.
    pub cdn_dir: Option<PathBuf>,
    /// The model, if served.
    pub model: Option<ModelFile>,
    /// Models whose swarm health `/api/v1/state` reports (id, blocks if known), besides
    /// those the node serves.
    pub watch_models: Vec<(String, Option<u32>)>,
    /// More metrics served in `/metrics` after the node's (the OpenAI API's).
    pub registries: Vec<Arc<prometheus_client::registry::Registry>>,
    /// More fields of `/api/v1/state` (the node's footprint), computed at each request.
    pub state_extras: Vec<StateExtra>,
}

/// A field of `/api/v1/state` its owner computes.
#[derive(Clone)]
pub struct StateExtra {
    name: &'static str,
    value: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
}

impl StateExtra {
    /// The field `name`, valued by `value`.
    pub fn new(
        name: &'static str,
        value: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            value: Arc::new(value),
        }
    }
}

impl std::fmt::Debug for StateExtra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateExtra({})", self.name)
    }
}

/// How often the swarm's health reports are refreshed.
const HEALTH_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct AppState {
    node: NodeHandle,
    config: HttpConfig,
    health: Arc<Monitor>,
}

/// The router: API, metrics and static files. Call it on a tokio runtime (the swarm health
/// monitor runs there until the router is dropped).
pub fn router(node: NodeHandle, config: HttpConfig) -> Router {
    let health = Arc::new(Monitor::spawn(
        node.clone(),
        config.watch_models.clone(),
        HEALTH_EVERY,
    ));
    let state = AppState {
        node,
        config: config.clone(),
        health,
    };
    let mut app = Router::new()
        .route("/api/v1/state", get(api_state))
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/privacy.html", get(privacy));
    if let Some(model) = &config.model {
        app = app.route_service(MODEL_PATH, ServeFile::new(&model.path));
    }
    if let Some(cdn) = &config.cdn_dir {
        app = app.nest_service("/cdn", ServeDir::new(cdn));
    }
    app = app.layer(middleware::from_fn(cors_for_assets));
    if let Some(site) = &config.site_dir {
        // Browsers ask for /favicon.ico where a page (or the JSON API) names no icon.
        app = app
            .route_service("/favicon.ico", ServeFile::new(site.join("favicon.svg")))
            .fallback_service(ServeDir::new(site))
            .layer(middleware::from_fn(hide_server_files));
    }
    app.layer(middleware::from_fn(cross_origin_isolation))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // Peer addresses reach the handlers (the API's per-client rate limits).
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}

/// Binds `addr` (the node binds 127.0.0.1 by default).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind(addr).await?)
}

async fn api_state(State(s): State<AppState>) -> Response {
    let state = match s.node.state().await {
        Ok(state) => state,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    // The node's state, and the swarm's health per model under `models`.
    let mut json = match serde_json::to_value(state) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    json.insert(
        "models".into(),
        serde_json::to_value(s.health.reports()).unwrap_or_default(),
    );
    for extra in &s.config.state_extras {
        json.insert(extra.name.into(), (extra.value)());
    }
    axum::Json(json).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let body = s.node.metrics_text_with(&s.config.registries);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The newest `v<version>` folder of the CDN dir holding the bundle.
fn cdn_version_dir(cdn: &Path) -> Option<(String, PathBuf)> {
    let entries = std::fs::read_dir(cdn).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with('v')))
        .filter(|e| e.path().join("distributed-ai.js").is_file())
        .filter_map(|e| {
            let t = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((t, e.file_name().to_str()?.to_owned(), e.path()))
        })
        .max_by_key(|(t, _, _)| *t)
        .map(|(_, n, p)| (n, p))
}

fn sri_of_bundle(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("sri-manifest.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("files")?
        .get("distributed-ai.js")?
        .get("integrity")?
        .as_str()
        .map(str::to_owned)
}

async fn index(State(s): State<AppState>) -> Response {
    templated(&s, "index.html").await
}

async fn privacy(State(s): State<AppState>) -> Response {
    templated(&s, "privacy.html").await
}

/// A page of the demo site with its placeholders filled in.
async fn templated(s: &AppState, name: &str) -> Response {
    let Some(site) = &s.config.site_dir else {
        return (
            StatusCode::OK,
            "KwaaiNet node: see /api/v1/state and /metrics\n",
        )
            .into_response();
    };
    let page = match tokio::fs::read_to_string(site.join(name)).await {
        Ok(p) => p,
        Err(_) => return StatusCode::NOT_FOUND.into_response(),
    };
    let bundle = s.config.cdn_dir.as_deref().and_then(cdn_version_dir);
    let cdn = bundle.as_ref().map(|(name, _)| format!("/cdn/{name}/"));
    let sri = bundle.as_ref().and_then(|(_, dir)| sri_of_bundle(dir));
    let model = s
        .config
        .model
        .as_ref()
        .map(|m| (MODEL_PATH, m.sha256.as_str()));
    let filled = template::fill(&page, |k| {
        node_value(k, cdn.as_deref(), sri.as_deref(), model)
    });
    match filled {
        Ok(page) => ([(header::CACHE_CONTROL, "no-cache")], Html(page)).into_response(),
        Err(e) => {
            let hint = match &bundle {
                None => " (no CDN bundle under --cdn-dir: build it with `node cdn/build.mjs`)"
                    .to_owned(),
                Some((_, dir)) if sri.is_none() => format!(
                    " ({} lacks distributed-ai.js's integrity: rebuild it with `node cdn/build.mjs`)",
                    dir.join("sri-manifest.json").display()
                ),
                Some(_) => String::new(),
            };
            let msg = format!("demo page {}: {e}{hint}", site.join(name).display());
            tracing::error!("{msg}");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{msg}\n")).into_response()
        }
    }
}

/// Where the model is served.
const MODEL_PATH: &str = "/models/model.gguf";

/// What the node knows of the demo page's placeholders: the CDN path and SRI hash of the
/// newest bundle (none without one) and the model's URL and SHA-256 (empty without a model:
/// the page then runs with no model configured).
fn node_value(
    name: &str,
    cdn: Option<&str>,
    sri: Option<&str>,
    model: Option<(&str, &str)>,
) -> Option<String> {
    match name {
        "cdn" => cdn.map(str::to_owned),
        "sri" => sri.map(str::to_owned),
        "modelUrl" => Some(model.map_or("", |m| m.0).to_owned()),
        "modelSha256" => Some(model.map_or("", |m| m.1).to_owned()),
        _ => None,
    }
}

/// CORS on the bundle and the model: pages on other origins embed them.
async fn cors_for_assets(req: Request, next: Next) -> Response {
    let asset = req.uri().path().starts_with("/cdn/") || req.uri().path().starts_with("/models/");
    let mut res = next.run(req).await;
    if asset {
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            "cross-origin-resource-policy",
            HeaderValue::from_static("cross-origin"),
        );
        h.insert("timing-allow-origin", HeaderValue::from_static("*"));
    }
    res
}

/// COOP `same-origin` and COEP `require-corp` on every response: the demo page (and the
/// workers it starts) are cross-origin isolated, so they may share memory between threads —
/// the multi-threaded CPU engine needs it. Everything the page loads is same-origin here, and
/// the bundle and the model also carry CORP/CORS for pages elsewhere.
async fn cross_origin_isolation(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-embedder-policy",
        HeaderValue::from_static("require-corp"),
    );
    res
}

/// Modules of the demo site that are page assets (imported by the page); every other `.mjs`
/// there is the dev server's or the tests' own code, not served.
const PAGE_MODULES: &[&str] = &[
    "/coverage.mjs",
    "/rights-ui.mjs",
    "/privacy.mjs",
    "/impact.mjs",
    "/pwa.mjs",
];

/// The demo's own dev server (`serve.mjs` and its helpers) and tests are not page assets.
async fn hide_server_files(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let hidden = path.starts_with("/tests/")
        || (path.ends_with(".mjs") && !path.starts_with("/cdn/") && !PAGE_MODULES.contains(&path));
    if hidden {
        return StatusCode::NOT_FOUND.into_response();
    }
    next.run(req).await
}
