//! The HTTP handlers: body limits, keys and rate limits, request → prompt → backend, and
//! the answer as JSON or server-sent events in OpenAI's formats.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use kwaainet_core::batch::TokenLogprob;
use kwaainet_core::chat::{Prompt, prompt_ids};
use kwaainet_core::generate::{FinishReason, GenerateOptions};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::engine::{Out, Work};
use crate::error::ApiError;
use crate::guard::Client;
use crate::metrics::RequestLabels;
use crate::openai::{ChatRequest, CompletionRequest, Job, PromptSpec};
use crate::{Api, AuditEvent, Backend, ServedModel};

type Shared = Arc<Api>;

/// The API's routes, to merge into the node's router.
pub fn router(api: Arc<Api>) -> Router {
    let cors = cors(&api.config.cors_origins);
    let v1 = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/{*rest}", axum::routing::any(unknown_route))
        .layer(middleware::from_fn_with_state(Arc::clone(&api), guard));
    let mut app = Router::new()
        .merge(v1)
        .route("/health", get(health))
        .with_state(api);
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    app
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Keys and rate limits before any route; the client's key index or address travels on
/// as an extension for nothing else (never the key). Refusals, and the requests that will
/// process someone's prompt, are reported to the audit hook.
async fn guard(State(api): State<Shared>, req: Request, next: Next) -> Response {
    let route = route_of(req.uri().path());
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |c| c.0.ip());
    let audit = |client: String, allowed: bool, reason: &'static str| {
        if let Some(hook) = &api.config.audit {
            hook.record(AuditEvent {
                client,
                route,
                allowed,
                reason,
            });
        }
    };
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let key = match api.config.keys.check(auth) {
        Ok(k) => k,
        Err(e) => {
            audit(format!("addr:{addr}"), false, "bad_key");
            return count(&api, route, e.into_response());
        }
    };
    let (client, name) = match key {
        Some(i) => (Client::Key(i), api.config.keys.audit_name(i)),
        None => (Client::Addr(addr), format!("addr:{addr}")),
    };
    if let Err(e) = api.limits.take(client) {
        audit(name, false, "rate_limited");
        return count(&api, route, e.into_response());
    }
    if matches!(route, "chat" | "completions") && req.method() == Method::POST {
        audit(name, true, "ok");
    }
    next.run(req).await
}

fn route_of(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat",
        "/v1/completions" => "completions",
        p if p.starts_with("/v1/models") => "models",
        _ => "other",
    }
}

/// Counts a response by route and status, and passes it on.
fn count(api: &Api, route: &'static str, res: Response) -> Response {
    api.metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            status: res.status().as_u16(),
        })
        .inc();
    res
}

async fn unknown_route(State(api): State<Shared>, req: Request) -> Response {
    let e = ApiError::not_found(
        None,
        "unknown_url",
        format!("unknown route {} {}", req.method(), req.uri().path()),
    );
    count(&api, "other", e.into_response())
}

fn model_json(m: &ServedModel) -> Value {
    json!({
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": "kwaainet",
        "context_length": m.context,
        "backend": match m.backend { Backend::Local(_) => "local", Backend::Swarm(_) => "swarm" },
        "aliases": m.aliases,
    })
}

async fn list_models(State(api): State<Shared>) -> Response {
    let data: Vec<Value> = api.models.iter().map(model_json).collect();
    count(
        &api,
        "models",
        axum::Json(json!({"object": "list", "data": data})).into_response(),
    )
}

async fn get_model(State(api): State<Shared>, Path(id): Path<String>) -> Response {
    let res = match api.models.iter().find(|m| m.answers_to(&id)) {
        Some(m) => axum::Json(model_json(m)).into_response(),
        None => unknown_model(&id).into_response(),
    };
    count(&api, "models", res)
}

fn unknown_model(name: &str) -> ApiError {
    ApiError::not_found(
        Some("model"),
        "model_not_found",
        format!("The model `{name}` does not exist on this node (see GET /v1/models)"),
    )
}

async fn health(State(api): State<Shared>) -> Response {
    let (mut active, mut queued) = (0, 0);
    for m in &api.models {
        if let Backend::Local(e) = &m.backend {
            active += e.active();
            queued += e.queued();
        }
    }
    if api.models.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "no model"})),
        )
            .into_response();
    }
    axum::Json(json!({"status": "ok", "slots_processing": active, "queued": queued}))
        .into_response()
}

/// Reads the body within the limit (413 beyond it).
async fn body(api: &Api, req: Request) -> Result<axum::body::Bytes, ApiError> {
    let limit = api.config.max_body;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(None, format!("invalid request body: {e}")))
}

async fn chat(State(api): State<Shared>, req: Request) -> Response {
    complete(api, req, Kind::Chat, |b| {
        parse::<ChatRequest>(b).and_then(ChatRequest::into_job)
    })
    .await
}

async fn completions(State(api): State<Shared>, req: Request) -> Response {
    complete(api, req, Kind::Text, |b| {
        parse::<CompletionRequest>(b).and_then(CompletionRequest::into_job)
    })
    .await
}

/// A completion route: the body within its limit, checked into a job, served.
async fn complete(
    api: Shared,
    req: Request,
    kind: Kind,
    job: fn(&[u8]) -> Result<Job, ApiError>,
) -> Response {
    let started = Instant::now();
    let res = match body(&api, req).await.and_then(|b| job(&b)) {
        Ok(job) => serve(&api, job, kind, started).await,
        Err(e) => Err(e),
    };
    let route = match kind {
        Kind::Chat => "chat",
        Kind::Text => "completions",
    };
    finish(&api, route, res)
}

fn finish(api: &Api, route: &'static str, res: Result<Response, ApiError>) -> Response {
    let res = match res {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() || e.status == StatusCode::TOO_MANY_REQUESTS {
                tracing::info!(route, status = e.status.as_u16(), error = %e.message, "api request refused");
            }
            e.into_response()
        }
    };
    count(api, route, res)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// What a request needs besides its events.
struct Ctx {
    api: Shared,
    id: String,
    model: String,
    created: u64,
    kind: Kind,
    job: Job,
    started: Instant,
    tokenizer: Arc<kwaainet_core::Tokenizer>,
    /// Prompt ids (for echo).
    prompt: Vec<u32>,
    /// The prompt's text (for echo of a text prompt).
    prompt_text: Option<String>,
}

impl Ctx {
    fn names(&self) -> Names<'_> {
        Names {
            tok: &self.tokenizer,
            ids: self.job.token_ids,
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(kind: Kind) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let prefix = if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    };
    format!("{prefix}-{t:x}{n:04x}")
}

async fn serve(api: &Shared, job: Job, kind: Kind, started: Instant) -> Result<Response, ApiError> {
    let model = match &job.model {
        Some(name) => api
            .models
            .iter()
            .find(|m| m.answers_to(name))
            .ok_or_else(|| unknown_model(name))?,
        None => api.models.first().ok_or_else(|| {
            ApiError::unavailable("no model is loaded", std::time::Duration::from_secs(5))
        })?,
    }
    .clone();
    // Rendering and tokenizing a large prompt is CPU work: off the async workers.
    let (prompt, prompt_text) = {
        let (spec, tok, template) = (
            job.prompt.clone(),
            Arc::clone(&model.tokenizer),
            model.template.clone(),
        );
        tokio::task::spawn_blocking(move || build_prompt(&spec, &tok, template.as_deref()))
            .await
            .map_err(|e| ApiError::internal(format!("prompt task: {e}")))??
    };
    let room = model.context.saturating_sub(prompt.len());
    let max_tokens = match job.max_tokens {
        Some(n) => n,
        None => room,
    };
    if room == 0 || max_tokens > room {
        return Err(ApiError::context_length(
            prompt.len().saturating_add(max_tokens.max(1)),
            model.context,
        ));
    }
    let work = Work {
        prompt: prompt.clone(),
        opts: GenerateOptions {
            max_tokens,
            sampler: job.sampler.clone(),
            stop: job.stop.clone(),
            ignore_eos: job.ignore_eos,
        },
        top_logprobs: job.top_logprobs,
        prompt_logprobs: job.echo && job.top_logprobs.is_some(),
    };
    let mut rx = match &model.backend {
        Backend::Local(e) => e.submit(work)?,
        Backend::Swarm(e) => e.submit(work)?,
    };
    // Wait for the prompt to run: a request that fails before its first token (queue
    // timeout, no swarm route) gets a real HTTP status, not a broken stream.
    let first = rx.recv().await;
    let prefill = match first {
        Some(Out::Prefilled(lp)) => lp,
        Some(Out::Failed(e)) => return Err(e),
        Some(_) | None => {
            return Err(ApiError::unavailable(
                "the engine stopped before the prompt ran",
                std::time::Duration::from_secs(1),
            ));
        }
    };
    let ctx = Ctx {
        api: Arc::clone(api),
        id: request_id(kind),
        model: model.id.clone(),
        created: now_secs(),
        kind,
        job,
        started,
        tokenizer: Arc::clone(&model.tokenizer),
        prompt,
        prompt_text,
    };
    if ctx.job.stream {
        Ok(stream(ctx, prefill, rx))
    } else {
        collect(ctx, prefill, rx).await
    }
}

fn build_prompt(
    spec: &PromptSpec,
    tok: &kwaainet_core::Tokenizer,
    template: Option<&kwaainet_core::ChatTemplate>,
) -> Result<(Vec<u32>, Option<String>), ApiError> {
    let (prompt, param, text) = match spec {
        PromptSpec::Chat(m) => (Prompt::Chat(m), "messages", None),
        PromptSpec::Text(t) => (Prompt::Text(t), "prompt", Some(t.clone())),
        PromptSpec::Tokens(ids) => (Prompt::Tokens(ids), "prompt", None),
    };
    let ids = prompt_ids(tok, template, prompt).map_err(|e| match e {
        // The prompt's own fault (empty, a token outside the vocabulary): its message alone.
        kwaainet_core::Error::InvalidArgument(m) => ApiError::invalid(Some(param), m),
        e => ApiError::invalid(Some(param), e.to_string()),
    })?;
    Ok((ids, text))
}

/// How tokens are named in log-probabilities: their text, or `token_id:<id>` when the
/// request asked for ids (vLLM's `return_tokens_as_token_ids`, for evaluation tools that
/// need exact ids).
#[derive(Clone, Copy)]
struct Names<'a> {
    tok: &'a kwaainet_core::Tokenizer,
    ids: bool,
}

impl Names<'_> {
    /// The token's text (lossy UTF-8 of its bytes) and bytes.
    fn text(&self, id: u32) -> (String, Vec<u8>) {
        let bytes = self
            .tok
            .token_bytes(id)
            .map(|b| b.into_owned())
            .unwrap_or_default();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    /// The name shown for the token, and its bytes.
    fn name(&self, id: u32) -> (String, Vec<u8>) {
        let (text, bytes) = self.text(id);
        if self.ids {
            (format!("token_id:{id}"), bytes)
        } else {
            (text, bytes)
        }
    }
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}

/// Chat log-probability entries of tokens.
fn chat_logprobs(names: Names<'_>, lps: &[TokenLogprob]) -> Value {
    let entry = |id: u32, lp: f32| {
        let (s, b) = names.name(id);
        json!({"token": s, "logprob": lp, "bytes": b})
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|t| {
            let mut e = entry(t.token, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

/// Text-completion log-probabilities (`tokens`, `token_logprobs`, `top_logprobs`,
/// `text_offset`) of `entries` (a `None` log-probability for the first prompt token),
/// offsets counted from `offset`.
fn text_logprobs(
    names: Names<'_>,
    entries: &[(u32, Option<&TokenLogprob>)],
    mut offset: usize,
) -> Value {
    let (mut tokens, mut lps, mut tops, mut offs) = (vec![], vec![], vec![], vec![]);
    for &(id, lp) in entries {
        offs.push(offset);
        offset += names.text(id).0.len();
        tokens.push(names.name(id).0);
        lps.push(lp.map_or(Value::Null, |l| json!(l.logprob)));
        tops.push(lp.map_or(Value::Null, |l| {
            let mut m = serde_json::Map::new();
            for &(t, p) in &l.top {
                m.entry(names.name(t).0).or_insert(json!(p));
            }
            Value::Object(m)
        }));
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs})
}

/// The echoed prompt's text, and its log-probability entries when asked for.
fn echo_text(ctx: &Ctx) -> String {
    match &ctx.prompt_text {
        Some(t) => t.clone(),
        None => ctx.tokenizer.decode(&ctx.prompt, false),
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// Logs the request and counts its tokens.
fn record(
    ctx: &Ctx,
    status: u16,
    prompt: usize,
    completion: usize,
    first: Option<Instant>,
    reason: &str,
) {
    let m = &ctx.api.metrics;
    m.prompt_tokens.inc_by(prompt as u64);
    m.completion_tokens.inc_by(completion as u64);
    m.duration.observe(ctx.started.elapsed().as_secs_f64());
    tracing::info!(
        id = %ctx.id,
        model = %ctx.model,
        status,
        stream = ctx.job.stream,
        prompt_tokens = prompt,
        completion_tokens = completion,
        ttft_ms = first.map(|t| (t - ctx.started).as_millis() as u64),
        total_ms = ctx.started.elapsed().as_millis() as u64,
        finish = reason,
        "api request"
    );
}

/// Accounts a finished request with the node's job hook: the footprint to report in its
/// `usage`, if any.
fn account(
    ctx: &Ctx,
    prompt: usize,
    completion: usize,
    cost: crate::engine::JobCost,
) -> Option<Value> {
    let hook = ctx.api.config.jobs.as_ref()?;
    (hook.0)(&crate::JobReport {
        route: match ctx.kind {
            Kind::Chat => "chat",
            Kind::Text => "completions",
        },
        prompt_tokens: prompt,
        completion_tokens: completion,
        wall: ctx.started.elapsed(),
        busy: cost.busy,
        hops: cost.hops,
    })
}

/// The `usage` object, with the footprint when there is one.
fn usage_with(prompt: usize, completion: usize, footprint: Option<Value>) -> Value {
    let mut u = usage(prompt, completion);
    if let Some(f) = footprint {
        u["footprint"] = f;
    }
    u
}

async fn collect(
    ctx: Ctx,
    prefill: Option<Vec<Option<TokenLogprob>>>,
    mut rx: UnboundedReceiver<Out>,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut ids = Vec::new();
    let mut lps: Vec<TokenLogprob> = Vec::new();
    let mut first = None;
    let (reason, prompt_tokens, completion_tokens, cost) = loop {
        match rx.recv().await {
            Some(Out::Token {
                token,
                text: t,
                logprob,
            }) => {
                first.get_or_insert_with(Instant::now);
                text.push_str(&t);
                ids.push(token);
                lps.extend(logprob);
            }
            Some(Out::Done {
                text: t,
                reason,
                prompt_tokens,
                completion_tokens,
                cost,
            }) => {
                text.push_str(&t);
                break (reason, prompt_tokens, completion_tokens, cost);
            }
            Some(Out::Failed(e)) => {
                record(
                    &ctx,
                    e.status.as_u16(),
                    ctx.prompt.len(),
                    ids.len(),
                    first,
                    "error",
                );
                return Err(e);
            }
            Some(Out::Prefilled(_)) => {}
            None => {
                return Err(ApiError::unavailable(
                    "the engine stopped mid-generation",
                    std::time::Duration::from_secs(1),
                ));
            }
        }
    };
    record(
        &ctx,
        200,
        prompt_tokens,
        completion_tokens,
        first,
        finish_reason(reason),
    );
    let footprint = account(&ctx, prompt_tokens, completion_tokens, cost);
    let usage = usage_with(prompt_tokens, completion_tokens, footprint);
    let body = match ctx.kind {
        Kind::Chat => json!({
            "id": ctx.id,
            "object": "chat.completion",
            "created": ctx.created,
            "model": ctx.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": ctx.job.top_logprobs.map(|_| chat_logprobs(ctx.names(), &lps)),
                "finish_reason": finish_reason(reason),
            }],
            "usage": usage,
        }),
        Kind::Text => {
            let (full, logprobs) = text_choice(&ctx, &prefill, &text, &ids, &lps);
            json!({
                "id": ctx.id,
                "object": "text_completion",
                "created": ctx.created,
                "model": ctx.model,
                "system_fingerprint": null,
                "choices": [{
                    "index": 0,
                    "text": full,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason(reason),
                }],
                "usage": usage,
            })
        }
    };
    Ok(axum::Json(body).into_response())
}

/// A text completion's text (the prompt first when echoing) and log-probabilities.
fn text_choice(
    ctx: &Ctx,
    prefill: &Option<Vec<Option<TokenLogprob>>>,
    text: &str,
    ids: &[u32],
    lps: &[TokenLogprob],
) -> (String, Value) {
    let echo = ctx.job.echo.then(|| echo_text(ctx));
    let full = match &echo {
        Some(p) => format!("{p}{text}"),
        None => text.to_owned(),
    };
    let logprobs = ctx.job.top_logprobs.map(|_| {
        let mut entries: Vec<(u32, Option<&TokenLogprob>)> = Vec::new();
        if echo.is_some()
            && let Some(p) = prefill
        {
            entries.extend(ctx.prompt.iter().zip(p).map(|(&id, lp)| (id, lp.as_ref())));
        }
        entries.extend(ids.iter().zip(lps).map(|(&id, lp)| (id, Some(lp))));
        text_logprobs(ctx.names(), &entries, 0)
    });
    (full, logprobs.unwrap_or(Value::Null))
}

/// Per-stream state: what has been sent.
struct Streaming {
    ctx: Ctx,
    rx: UnboundedReceiver<Out>,
    prefill: Option<Option<Vec<Option<TokenLogprob>>>>,
    first: Option<Instant>,
    done: bool,
    completion: usize,
    offset: usize,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if !self.done {
            // The client went away mid-stream (499, as nginx logs it); the engine sees the
            // channel close and frees the slot.
            record(
                &self.ctx,
                499,
                self.ctx.prompt.len(),
                self.completion,
                self.first,
                "disconnected",
            );
        }
    }
}

fn event(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

impl Streaming {
    fn chunk(&self, choice: Value) -> Value {
        let mut c = match self.ctx.kind {
            Kind::Chat => json!({
                "id": self.ctx.id,
                "object": "chat.completion.chunk",
                "created": self.ctx.created,
                "model": self.ctx.model,
                "system_fingerprint": null,
                "choices": [choice],
            }),
            Kind::Text => json!({
                "id": self.ctx.id,
                "object": "text_completion",
                "created": self.ctx.created,
                "model": self.ctx.model,
                "system_fingerprint": null,
                "choices": [choice],
            }),
        };
        if self.ctx.job.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    /// The events that open a stream: the assistant role (chat) or the echoed prompt.
    fn opening(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let Some(prefill) = self.prefill.take() else {
            return out;
        };
        match self.ctx.kind {
            Kind::Chat => {
                out.push(event(&self.chunk(json!({
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": null,
                    "finish_reason": null,
                }))));
            }
            Kind::Text if self.ctx.job.echo => {
                let text = echo_text(&self.ctx);
                let logprobs = self.ctx.job.top_logprobs.map(|_| {
                    let entries: Vec<(u32, Option<&TokenLogprob>)> = match &prefill {
                        Some(p) => self
                            .ctx
                            .prompt
                            .iter()
                            .zip(p)
                            .map(|(&id, lp)| (id, lp.as_ref()))
                            .collect(),
                        None => Vec::new(),
                    };
                    text_logprobs(self.ctx.names(), &entries, 0)
                });
                self.offset = text.len();
                out.push(event(&self.chunk(json!({
                    "index": 0,
                    "text": text,
                    "logprobs": logprobs,
                    "finish_reason": null,
                }))));
            }
            Kind::Text => {}
        }
        out
    }

    fn token(&mut self, token: u32, text: String, logprob: Option<TokenLogprob>) -> Option<Event> {
        self.first.get_or_insert_with(Instant::now);
        self.completion += 1;
        if text.is_empty() && logprob.is_none() {
            return None;
        }
        let choice = match self.ctx.kind {
            Kind::Chat => json!({
                "index": 0,
                "delta": {"content": text},
                "logprobs": logprob.map(|l| chat_logprobs(self.ctx.names(), &[l])),
                "finish_reason": null,
            }),
            Kind::Text => {
                let lp = logprob
                    .map(|l| text_logprobs(self.ctx.names(), &[(token, Some(&l))], self.offset));
                self.offset += text.len();
                json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": null})
            }
        };
        Some(event(&self.chunk(choice)))
    }

    fn end(
        &mut self,
        text: String,
        reason: FinishReason,
        prompt: usize,
        completion: usize,
        cost: crate::engine::JobCost,
    ) -> Vec<Event> {
        self.done = true;
        let footprint = account(&self.ctx, prompt, completion, cost);
        record(
            &self.ctx,
            200,
            prompt,
            completion,
            self.first,
            finish_reason(reason),
        );
        let mut out = Vec::new();
        let choice = match self.ctx.kind {
            Kind::Chat => {
                let delta = if text.is_empty() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason(reason)})
            }
            Kind::Text => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason(reason)})
            }
        };
        out.push(event(&self.chunk(choice)));
        if self.ctx.job.include_usage {
            let mut u = self.chunk(Value::Null);
            u["choices"] = json!([]);
            u["usage"] = usage_with(prompt, completion, footprint);
            out.push(event(&u));
        }
        out.push(Event::default().data("[DONE]"));
        out
    }

    fn fail(&mut self, e: &ApiError) -> Vec<Event> {
        self.done = true;
        record(
            &self.ctx,
            e.status.as_u16(),
            self.ctx.prompt.len(),
            self.completion,
            self.first,
            "error",
        );
        vec![event(&e.body()), Event::default().data("[DONE]")]
    }

    /// The next events to send, or `None` at the end.
    async fn next_events(&mut self) -> Option<Vec<Event>> {
        if self.prefill.is_some() {
            let open = self.opening();
            if !open.is_empty() {
                return Some(open);
            }
        }
        if self.done {
            return None;
        }
        loop {
            match self.rx.recv().await {
                Some(Out::Token {
                    token,
                    text,
                    logprob,
                }) => {
                    if let Some(e) = self.token(token, text, logprob) {
                        return Some(vec![e]);
                    }
                }
                Some(Out::Done {
                    text,
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    cost,
                }) => {
                    return Some(self.end(text, reason, prompt_tokens, completion_tokens, cost));
                }
                Some(Out::Failed(e)) => return Some(self.fail(&e)),
                Some(Out::Prefilled(_)) => {}
                None => {
                    let e = ApiError::unavailable(
                        "the engine stopped mid-generation",
                        std::time::Duration::from_secs(1),
                    );
                    return Some(self.fail(&e));
                }
            }
        }
    }
}

fn stream(
    ctx: Ctx,
    prefill: Option<Vec<Option<TokenLogprob>>>,
    rx: UnboundedReceiver<Out>,
) -> Response {
    let keep_alive = ctx.api.config.keep_alive;
    let state = Streaming {
        ctx,
        rx,
        prefill: Some(prefill),
        first: None,
        done: false,
        completion: 0,
        offset: 0,
    };
    let events = futures::stream::unfold(state, |mut s| async move {
        let evs = s.next_events().await?;
        Some((
            futures::stream::iter(evs.into_iter().map(Ok::<_, std::convert::Infallible>)),
            s,
        ))
    })
    .flatten();
    let mut res = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response();
    // Proxies must pass tokens on as they come.
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}
