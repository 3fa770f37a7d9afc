//! `WasmSwarmClient`: a page generates through the swarm ([`crate::swarm_client`]) from a
//! worker of the `serve` module.
//!
//! The client is synchronous, as the engine's generation loop is: each request to a server
//! waits for its reply. Its links are functions of the worker's global
//! `kwaainetSwarmLinks` (`open(server) → id`, `send(id, frame)`, `recv(id, maxPayload) →
//! Uint8Array | null`, `close(id)`), which the SDK's worker implements by asking the page
//! (whose P2P node holds the streams) and blocking on `Atomics.wait` for the answer. An
//! error they throw carries a `kind` (`unreachable`, `closed`, `timeout`, `protocol`): the
//! client's failover reads it.

use std::sync::Arc;

use kwaainet_swarm::{Connector, Link, LinkError, ServerEntry};
use serde::Deserialize;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::bindings::{check_keys, js_err, options_err, step_count, to_js};
use crate::engine::Request;
use crate::swarm_client::{SwarmClient, SwarmRoute, codec_choice};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = kwaainetSwarmLinks, js_name = open, catch)]
    fn link_open(server: &str) -> Result<u32, JsValue>;
    #[wasm_bindgen(js_namespace = kwaainetSwarmLinks, js_name = send, catch)]
    fn link_send(link: u32, frame: &[u8]) -> Result<(), JsValue>;
    #[wasm_bindgen(js_namespace = kwaainetSwarmLinks, js_name = recv, catch)]
    fn link_recv(link: u32, max_payload: u32) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(js_namespace = kwaainetSwarmLinks, js_name = close)]
    fn link_close(link: u32);
}

/// A link function's failure as the client's [`LinkError`].
fn link_err(server: &str, e: &JsValue) -> LinkError {
    let kind = js_sys::Reflect::get(e, &JsValue::from_str("kind"))
        .ok()
        .and_then(|k| k.as_string());
    let message = e
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .unwrap_or_else(|| "the link failed".to_owned());
    let server = server.to_owned();
    match kind.as_deref() {
        Some("timeout") => LinkError::Timeout(server),
        Some("closed") => LinkError::Closed(server),
        Some("protocol") => LinkError::Protocol {
            server,
            reason: message,
        },
        _ => LinkError::Unreachable(server),
    }
}

/// Servers reached through the worker's `kwaainetSwarmLinks`.
#[derive(Debug)]
struct JsLinks;

impl Connector for JsLinks {
    fn connect(&self, server: &str) -> Result<Box<dyn Link>, LinkError> {
        let id = link_open(server).map_err(|e| link_err(server, &e))?;
        Ok(Box::new(JsLink {
            id,
            server: server.to_owned(),
            open: true,
        }))
    }
}

/// One stream, by the id the page gave it.
struct JsLink {
    id: u32,
    server: String,
    open: bool,
}

impl Link for JsLink {
    fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        link_send(self.id, frame).map_err(|e| link_err(&self.server, &e))
    }

    fn recv(&mut self, max_reply_payload: usize) -> Result<Option<Vec<u8>>, LinkError> {
        let max = u32::try_from(max_reply_payload).unwrap_or(u32::MAX);
        let value = link_recv(self.id, max).map_err(|e| link_err(&self.server, &e))?;
        if value.is_null() || value.is_undefined() {
            return Ok(None);
        }
        let bytes: js_sys::Uint8Array = value.dyn_into().map_err(|_| LinkError::Protocol {
            server: self.server.clone(),
            reason: "the link answered something other than bytes".into(),
        })?;
        Ok(Some(bytes.to_vec()))
    }

    fn close(&mut self) {
        if std::mem::take(&mut self.open) {
            link_close(self.id);
        }
    }
}

impl Drop for JsLink {
    fn drop(&mut self) {
        self.close();
    }
}

/// Options of [`WasmSwarmClient`]'s constructor (camelCase in JavaScript).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientOptions {
    model_id: Option<String>,
    sha256: Option<String>,
    max_ctx: Option<u32>,
}

/// A server of the route argument.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServerArg {
    id: String,
    start: u32,
    end: u32,
    throughput: Option<f64>,
    free_cache: Option<u32>,
}

/// The route argument of `start`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RouteArg {
    servers: Vec<ServerArg>,
    codec: Option<String>,
    session_id: String,
}

/// A model's embedding and head, generating through span servers. `new
/// WasmSwarmClient(ggufBytes, { modelId | sha256, maxCtx? })` loads no block; `start(request,
/// { servers: [{ id, start, end, throughput?, freeCache? }], codec?, sessionId })` starts a
/// generation (the request as `WasmEngine.start` takes it) and returns its id; `step(id,
/// maxTokens)` runs it as the engine's `step` does, reaching the servers through the
/// worker's `kwaainetSwarmLinks`; `report(id)` says where it went.
#[wasm_bindgen]
#[derive(Debug)]
pub struct WasmSwarmClient {
    inner: SwarmClient,
}

#[wasm_bindgen]
impl WasmSwarmClient {
    /// Loads the embedding, head, tokenizer and template of the GGUF file `bytes`.
    #[wasm_bindgen(constructor)]
    pub fn new(
        bytes: &[u8],
        #[wasm_bindgen(
            unchecked_param_type = "{ modelId?: string, sha256?: string, maxCtx?: number }"
        )]
        options: JsValue,
    ) -> Result<WasmSwarmClient, JsValue> {
        check_keys("client options", &options, &["modelId", "sha256", "maxCtx"])?;
        let o: ClientOptions = serde_wasm_bindgen::from_value(options)
            .map_err(|e| options_err("client options", e))?;
        let model = crate::span::ModelName::from_options(o.model_id, o.sha256)
            .map_err(|e| options_err("client options", e.message))?;
        let inner =
            SwarmClient::load(bytes, model, o.max_ctx.map(|n| n as usize)).map_err(js_err)?;
        Ok(Self { inner })
    }

    /// The id the model's servers announce.
    #[wasm_bindgen(getter, js_name = modelId)]
    pub fn model_id(&self) -> String {
        self.inner.model_id().to_owned()
    }

    /// The model's blocks.
    #[wasm_bindgen(getter)]
    pub fn blocks(&self) -> u32 {
        u32::try_from(self.inner.blocks()).unwrap_or(u32::MAX)
    }

    /// Most positions of one generation.
    #[wasm_bindgen(getter, js_name = maxCtx)]
    pub fn max_ctx(&self) -> u32 {
        u32::try_from(self.inner.max_ctx()).unwrap_or(u32::MAX)
    }

    /// Starts a generation (ending the previous one); returns its id.
    pub fn start(
        &mut self,
        #[wasm_bindgen(unchecked_param_type = "WasmStartRequest")] request: JsValue,
        #[wasm_bindgen(
            unchecked_param_type = "{ servers: { id: string, start: number, end: number, throughput?: number, freeCache?: number }[], codec?: string, sessionId: string }"
        )]
        route: JsValue,
    ) -> Result<u32, JsValue> {
        check_keys("request", &request, Request::FIELDS)?;
        let req: Request =
            serde_wasm_bindgen::from_value(request).map_err(|e| options_err("request", e))?;
        check_keys("route", &route, &["servers", "codec", "sessionId"])?;
        let r: RouteArg =
            serde_wasm_bindgen::from_value(route).map_err(|e| options_err("route", e))?;
        let codec = codec_choice(r.codec.as_deref().unwrap_or("f32")).map_err(js_err)?;
        let servers = r
            .servers
            .into_iter()
            .map(|s| ServerEntry {
                throughput: s.throughput.filter(|t| t.is_finite() && *t > 0.0),
                free_cache: s.free_cache.map(|n| n as usize),
                ..ServerEntry::new(s.id, s.start as usize..s.end as usize)
            })
            .collect();
        let route = SwarmRoute {
            servers,
            codec,
            session_id: r.session_id,
        };
        let id = self
            .inner
            .start(&req, route, Arc::new(JsLinks))
            .map_err(js_err)?;
        Ok(u32::try_from(id).unwrap_or(u32::MAX))
    }

    /// Runs the prefill on the first call, then up to `maxTokens` decode steps.
    #[wasm_bindgen(unchecked_return_type = "WasmStepResult")]
    pub fn step(
        &mut self,
        id: u32,
        #[wasm_bindgen(js_name = maxTokens)] max_tokens: f64,
    ) -> Result<JsValue, JsValue> {
        let n = step_count(max_tokens)?;
        to_js(&self.inner.step(u64::from(id), n as usize).map_err(js_err)?)
    }

    /// `{ route: [{ server, start, end }], steps, failovers, replays, bytesSent,
    /// bytesReceived }` of generation `id`, or `null` once it ended.
    pub fn report(&self, id: u32) -> Result<JsValue, JsValue> {
        match self.inner.report(u64::from(id)) {
            Some(r) => to_js(&r),
            None => Ok(JsValue::NULL),
        }
    }

    /// Ends the running generation (its streams close).
    pub fn end(&mut self) {
        self.inner.end();
    }
}
