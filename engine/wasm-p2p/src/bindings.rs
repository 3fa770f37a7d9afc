//! The page-side P2P node's JavaScript surface (module `dist/p2p/`): converts values for
//! `kwaainet_p2p::browser`, which holds the logic.
//!
//! Errors reach JavaScript as `Error`s named `KwaaiNetP2pError` with a stable `code`
//! ([`crate::P2pCode`]): `invalid-argument` (bad arguments), `unreachable` (dial failed, node
//! offline), `query` (a lookup or message failed or timed out), `record` (an invalid
//! record), `stopped` (the node was freed), `internal`. The SDK maps them to `P2pError`
//! (its `reason`) and `InvalidArgumentError` (`sdk-ts/src/network.ts`).

use std::time::Duration;

use futures::StreamExt;
use kwaainet_p2p::Error;
use kwaainet_p2p::browser::{self, BrowserConfig, BrowserEvent, BrowserHandle};
use kwaainet_p2p::libp2p::identity::Keypair;
use kwaainet_p2p::libp2p::{Multiaddr, PeerId, StreamProtocol};
use kwaainet_p2p::record::{Accelerator, ServedSpan, SpanState};
use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::P2pCode;
use wasm_bindgen_futures::{future_to_promise, spawn_local};

/// Upper bounds on the options a page may pass.
const MAX_BOOTSTRAP_ADDRS: usize = 16;
const MAX_DIAL_TIMEOUT_MS: u64 = 60_000;
const MAX_RECONNECT_ATTEMPTS: u32 = 1_000;
const MAX_BACKOFF_MS: u64 = 5 * 60_000;
const MAX_SERVE_WAIT_MS: u64 = 10 * 60_000;

/// An `Error` named `KwaaiNetP2pError` with the message and `code`.
pub(crate) fn err(code: P2pCode, e: impl std::fmt::Display) -> JsValue {
    let error = js_sys::Error::new(&e.to_string());
    error.set_name("KwaaiNetP2pError");
    // Setting a property on a fresh Error object cannot fail.
    let _ = js_sys::Reflect::set(
        &error,
        &JsValue::from_str("code"),
        &JsValue::from_str(code.as_str()),
    );
    error.into()
}

fn p2p_err(e: Error) -> JsValue {
    let code = match &e {
        Error::Transport(_) => P2pCode::Unreachable,
        Error::Query(_) => P2pCode::Query,
        Error::InvalidRecord(_) => P2pCode::Record,
        Error::Config(_) => P2pCode::InvalidArgument,
        Error::NodeStopped => P2pCode::Stopped,
        _ => P2pCode::Internal,
    };
    err(code, e)
}

fn peer(s: &str) -> Result<PeerId, JsValue> {
    s.parse()
        .map_err(|e| err(P2pCode::InvalidArgument, format_args!("peer id {s:?}: {e}")))
}

fn set(obj: &js_sys::Object, key: &str, value: impl Into<JsValue>) {
    // Setting a property on a plain object we created cannot fail.
    let _ = js_sys::Reflect::set(obj, &JsValue::from_str(key), &value.into());
}

fn event_to_js(ev: BrowserEvent) -> JsValue {
    let o = js_sys::Object::new();
    match ev {
        BrowserEvent::Connected {
            peer,
            addr,
            transport,
            bootstrap,
            setup_ms,
        } => {
            set(&o, "type", "connected");
            set(&o, "peer", peer.to_string());
            set(&o, "addr", addr.to_string());
            set(&o, "transport", transport);
            set(&o, "bootstrap", bootstrap);
            set(&o, "setupMs", setup_ms.map_or(JsValue::NULL, JsValue::from));
        }
        BrowserEvent::Disconnected { peer, bootstrap } => {
            set(&o, "type", "disconnected");
            set(&o, "peer", peer.to_string());
            set(&o, "bootstrap", bootstrap);
        }
        BrowserEvent::Reconnecting { attempt, delay_ms } => {
            set(&o, "type", "reconnecting");
            set(&o, "attempt", attempt);
            set(&o, "delayMs", delay_ms as f64);
        }
        BrowserEvent::Offline { reason } => {
            set(&o, "type", "offline");
            set(&o, "reason", reason);
        }
        BrowserEvent::RelayReady { addr } => {
            set(&o, "type", "relay-ready");
            set(&o, "addr", addr.to_string());
        }
        BrowserEvent::Message { from, data } => {
            set(&o, "type", "message");
            set(&o, "from", from.to_string());
            set(&o, "data", js_sys::Uint8Array::from(data.as_slice()));
        }
    }
    o.into()
}

fn json_to_js(v: &impl serde::Serialize) -> Result<JsValue, JsValue> {
    let text = serde_json::to_string(v).map_err(|e| err(P2pCode::Internal, e))?;
    js_sys::JSON::parse(&text)
}

/// Options of [`WasmP2pNode::start`] (camelCase in JavaScript; unknown keys are refused).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StartOptions {
    bootstrap: Vec<String>,
    dial_timeout_ms: Option<u64>,
    relay_listen: Option<bool>,
    reconnect_attempts: Option<u32>,
    max_backoff_ms: Option<u64>,
}

/// A span the page announces (`host`), camelCase in JavaScript.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpanArg {
    model: String,
    start: u32,
    end: u32,
    state: Option<SpanState>,
    throughput: Option<f32>,
    free_cache: Option<u32>,
}

/// Options of [`WasmP2pNode::serve_inference`].
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServeOptions {
    max_streams: Option<usize>,
    idle_ms: Option<u64>,
    reply_ms: Option<u64>,
    max_payload_bytes: Option<usize>,
}

/// The page-side libp2p node.
#[wasm_bindgen]
#[derive(Debug)]
pub struct WasmP2pNode {
    handle: BrowserHandle,
    serving: Option<crate::serve::Serving>,
    /// The page's key (this session's, or the persistent one): signs its consent records
    /// and data-rights requests.
    key: Keypair,
}

#[wasm_bindgen]
impl WasmP2pNode {
    /// Starts a node with `identity` (a [`crate::identity::PageIdentity`], consumed), or a
    /// fresh key for this session, and begins dialing the bootstrap node:
    /// `options = { bootstrap: string[], dialTimeoutMs?, relayListen?, reconnectAttempts?,
    /// maxBackoffMs? }`. `onEvent(event)` receives `{ type: 'connected' | 'disconnected' |
    /// 'reconnecting' | 'offline' | 'relay-ready' | 'message', ... }`.
    pub fn start(
        options: JsValue,
        on_event: js_sys::Function,
        identity: Option<crate::identity::PageIdentity>,
    ) -> Result<WasmP2pNode, JsValue> {
        let o: StartOptions = serde_wasm_bindgen::from_value(options)
            .map_err(|e| err(P2pCode::InvalidArgument, e))?;
        if o.bootstrap.is_empty() || o.bootstrap.len() > MAX_BOOTSTRAP_ADDRS {
            return Err(err(
                P2pCode::InvalidArgument,
                format_args!("bootstrap: 1 to {MAX_BOOTSTRAP_ADDRS} addresses"),
            ));
        }
        let bootstrap = o
            .bootstrap
            .iter()
            .map(|a| {
                a.parse::<Multiaddr>()
                    .map_err(|e| err(P2pCode::InvalidArgument, format_args!("address {a:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let d = BrowserConfig::default();
        let config = BrowserConfig {
            bootstrap,
            dial_timeout: o.dial_timeout_ms.map_or(d.dial_timeout, |ms| {
                Duration::from_millis(ms.clamp(100, MAX_DIAL_TIMEOUT_MS))
            }),
            relay_listen: o.relay_listen.unwrap_or(d.relay_listen),
            reconnect_attempts: o
                .reconnect_attempts
                .map_or(d.reconnect_attempts, |n| n.min(MAX_RECONNECT_ATTEMPTS)),
            max_backoff: o.max_backoff_ms.map_or(d.max_backoff, |ms| {
                Duration::from_millis(ms.clamp(100, MAX_BACKOFF_MS))
            }),
        };
        let key = identity.map_or_else(Keypair::generate_ed25519, |i| i.keypair());
        let (handle, mut events, run) =
            browser::start(key.clone(), config).map_err(|e| err(P2pCode::InvalidArgument, e))?;
        spawn_local(run);
        spawn_local(async move {
            while let Some(ev) = events.next().await {
                if let Err(e) = on_event.call1(&JsValue::NULL, &event_to_js(ev)) {
                    web_sys_log(&e);
                }
            }
        });
        Ok(WasmP2pNode {
            handle,
            serving: None,
            key,
        })
    }

    /// Answers `/kwaainet/inference/1.0.0` streams that reach this page (through its relay
    /// circuit): `handler(streamId, frame, peer)` gets each frame (`Uint8Array`) and returns
    /// the reply bytes (or a Promise of them), or `null` to end the stream; it is called
    /// with `frame === null` once when a stream ends. `options = { maxStreams? (1-64),
    /// idleMs?, replyMs?, maxPayloadBytes? }`. Bad frames, a throwing or silent handler and
    /// idle streams end with a Fail frame or a close, never a hang.
    #[wasm_bindgen(js_name = serveInference)]
    pub fn serve_inference(
        &mut self,
        handler: js_sys::Function,
        options: JsValue,
    ) -> Result<(), JsValue> {
        let o: ServeOptions = if options.is_undefined() || options.is_null() {
            ServeOptions::default()
        } else {
            serde_wasm_bindgen::from_value(options).map_err(|e| err(P2pCode::InvalidArgument, e))?
        };
        let d = crate::serve::ServeConfig::default();
        let config = crate::serve::ServeConfig {
            max_streams: o.max_streams.map_or(d.max_streams, |n| n.clamp(1, 64)),
            idle: o.idle_ms.map_or(d.idle, |ms| {
                Duration::from_millis(ms.clamp(1_000, MAX_SERVE_WAIT_MS))
            }),
            reply: o.reply_ms.map_or(d.reply, |ms| {
                Duration::from_millis(ms.clamp(1_000, MAX_SERVE_WAIT_MS))
            }),
            max_payload: o
                .max_payload_bytes
                .map_or(d.max_payload, |n| n.clamp(1 << 10, 64 << 20)),
        };
        if let Some(old) = self.serving.take() {
            old.stop();
        }
        let mut control = self.handle.stream_control();
        let serving = crate::serve::start(&mut control, handler, config)
            .map_err(|e| err(P2pCode::InvalidArgument, e))?;
        self.serving = Some(serving);
        Ok(())
    }

    /// Stops answering inference streams and ends the open ones (new ones are refused, so
    /// clients fail over).
    #[wasm_bindgen(js_name = stopServing)]
    pub fn stop_serving(&mut self) {
        if let Some(s) = self.serving.take() {
            s.stop();
        }
    }

    /// `{ open, accepted }`: inference streams open now and accepted since serving began.
    #[wasm_bindgen(js_name = servingState)]
    pub fn serving_state(&self) -> JsValue {
        match &self.serving {
            None => JsValue::NULL,
            Some(s) => {
                let o = js_sys::Object::new();
                set(&o, "open", s.open_streams() as u32);
                set(&o, "accepted", s.accepted() as f64);
                o.into()
            }
        }
    }

    /// Announces `spans` (`[{ model, start, end, state?, throughput?, freeCache? }]`) in our
    /// signed record, stored and published by our relay (`/kwaainet/host/1.0.0`); an empty
    /// list withdraws them. `accelerator`: `'cpu'` (default) or `'webgpu'`. Resolves once
    /// the relay stored it; rejects with its reason.
    pub fn host(&self, spans: JsValue, accelerator: Option<String>) -> js_sys::Promise {
        let h = self.handle.clone();
        future_to_promise(async move {
            let spans: Vec<SpanArg> = serde_wasm_bindgen::from_value(spans)
                .map_err(|e| err(P2pCode::InvalidArgument, format_args!("spans: {e}")))?;
            let accelerator = match accelerator.as_deref() {
                None | Some("cpu") => Accelerator::Cpu,
                Some("webgpu") => Accelerator::Webgpu,
                Some(other) => {
                    return Err(err(
                        P2pCode::InvalidArgument,
                        format_args!("accelerator {other:?}: 'cpu' or 'webgpu'"),
                    ));
                }
            };
            let spans = spans
                .into_iter()
                .map(|s| ServedSpan {
                    state: s.state.unwrap_or_default(),
                    throughput: s.throughput,
                    free_cache: s.free_cache,
                    ..ServedSpan::new(s.model, s.start, s.end)
                })
                .collect();
            h.host(spans, accelerator).await.map_err(p2p_err)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// This page's `did:key` (the key behind its peer id).
    pub fn did(&self) -> Result<String, JsValue> {
        kwaainet_p2p::did::from_peer_id(&self.key.public().to_peer_id())
            .map_err(|e| err(P2pCode::Internal, e))
    }

    /// Opens this identity's vault `name` in the origin's IndexedDB: blobs sealed by keys
    /// derived from the page's key (a persistent identity keeps them across visits).
    #[wasm_bindgen(js_name = openVault)]
    pub async fn open_vault(&self, name: String) -> Result<crate::vault::PageVault, JsValue> {
        crate::vault::PageVault::open_for(&self.key, &name).await
    }

    /// A request to the node `audience` (its did:key) to act on this page's data
    /// (`export`, `erase`, …) with `params`, signed with this page's key, timed now and with
    /// a fresh nonce: `{ request, signature }` for the node's `POST /api/v1/data`.
    #[wasm_bindgen(js_name = signRequest)]
    pub fn sign_request(
        &self,
        audience: String,
        action: String,
        params: JsValue,
    ) -> Result<JsValue, JsValue> {
        let params: serde_json::Value = if params.is_undefined() || params.is_null() {
            serde_json::json!({})
        } else {
            serde_wasm_bindgen::from_value(params).map_err(|e| err(P2pCode::InvalidArgument, e))?
        };
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| err(P2pCode::Internal, e))?;
        let now = js_sys::Date::now() as u64;
        let signed = kwaainet_p2p::request::sign(&self.key, &audience, &action, params, now, nonce)
            .map_err(|e| err(P2pCode::InvalidArgument, e))?;
        let json = serde_json::to_string(&signed).map_err(|e| err(P2pCode::Internal, e))?;
        js_sys::JSON::parse(&json)
    }

    /// A consent record of `site`'s decisions (`purposes`: `{ compute, storage, analytics }`
    /// booleans), signed with this page's key; under GPC (`gpc`) storage and analytics are
    /// recorded as refused. Returns `{ record, signature }` for a node's `/api/v1/consent`.
    #[wasm_bindgen(js_name = signConsent)]
    pub fn sign_consent(
        &self,
        site: String,
        purposes: JsValue,
        gpc: bool,
    ) -> Result<JsValue, JsValue> {
        let purposes: std::collections::BTreeMap<String, bool> =
            serde_wasm_bindgen::from_value(purposes)
                .map_err(|e| err(P2pCode::InvalidArgument, e))?;
        let now = js_sys::Date::now() as u64;
        let signed = kwaainet_p2p::consent::sign(&self.key, &site, &purposes, gpc, now)
            .map_err(|e| err(P2pCode::InvalidArgument, e))?;
        let json = serde_json::to_string(&signed).map_err(|e| err(P2pCode::Internal, e))?;
        js_sys::JSON::parse(&json)
    }

    /// Signs this page's contribution (`totals`: `{ fromMs, servedTokens, blockTokens,
    /// busyMs, bytes, uptimeS, energyUwh, carbonUg, renewablePermille, region? }`, what it
    /// served since `fromMs`) as a record (`kwaainet-footprint`'s `SignedContribution`,
    /// its energy `modelled`), checks it as any reader will, and has our relay carry it in
    /// our hosted record, where the swarm's leaderboards read it. Resolves with
    /// `{ record, signature }`.
    #[wasm_bindgen(js_name = publishContribution)]
    pub fn publish_contribution(&self, totals: JsValue) -> js_sys::Promise {
        let signed = self.sign_contribution(totals);
        let h = self.handle.clone();
        future_to_promise(async move {
            let signed = signed?;
            let text = serde_json::to_string(&signed).map_err(|e| err(P2pCode::Internal, e))?;
            h.set_contribution(text.clone()).await.map_err(p2p_err)?;
            js_sys::JSON::parse(&text)
        })
    }

    fn sign_contribution(
        &self,
        totals: JsValue,
    ) -> Result<kwaainet_footprint::contribution::SignedContribution, JsValue> {
        use kwaainet_footprint::contribution::{Contribution, SignedContribution, VERSION};
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Totals {
            from_ms: u64,
            served_tokens: u64,
            block_tokens: u64,
            busy_ms: u64,
            bytes: u64,
            uptime_s: u64,
            energy_uwh: u64,
            carbon_ug: u64,
            renewable_permille: u16,
            region: Option<String>,
        }
        let t: Totals =
            serde_wasm_bindgen::from_value(totals).map_err(|e| err(P2pCode::InvalidArgument, e))?;
        let now = js_sys::Date::now() as u64;
        let record = Contribution {
            v: VERSION,
            contributor: self.did()?,
            name: None,
            region: t.region,
            from_ms: t.from_ms,
            to_ms: now.max(t.from_ms),
            jobs: 0,
            tokens: 0,
            served_tokens: t.served_tokens,
            block_tokens: t.block_tokens,
            busy_ms: t.busy_ms,
            bytes: t.bytes,
            uptime_s: t.uptime_s,
            energy_uwh: t.energy_uwh,
            carbon_ug: t.carbon_ug,
            renewable_permille: t.renewable_permille,
            method: kwaainet_footprint::Method::Modelled,
        };
        record
            .check(now)
            .map_err(|e| err(P2pCode::InvalidArgument, e))?;
        SignedContribution::sign(&record, |b| self.key.sign(b).unwrap_or_default())
            .map_err(|e| err(P2pCode::Internal, e))
    }

    #[wasm_bindgen(js_name = peerId)]
    pub fn peer_id(&self) -> String {
        self.handle.peer_id().to_string()
    }

    /// Resolves with `{ peer, addr }` once connected to the bootstrap node (at once if
    /// connected); rejects if it is offline.
    pub fn connected(&self) -> js_sys::Promise {
        let h = self.handle.clone();
        future_to_promise(async move {
            let (peer, addr) = h.connected().await.map_err(p2p_err)?;
            let o = js_sys::Object::new();
            set(&o, "peer", peer.to_string());
            set(&o, "addr", addr.to_string());
            Ok(o.into())
        })
    }

    /// `{ peerId, bootstrap: { peer, addr } | null, relayAddr: string | null, peers: string[] }`.
    pub fn state(&self) -> js_sys::Promise {
        let h = self.handle.clone();
        future_to_promise(async move {
            let s = h.state().await.map_err(p2p_err)?;
            let o = js_sys::Object::new();
            set(&o, "peerId", s.peer_id.to_string());
            let b = match s.bootstrap {
                Some((peer, addr)) => {
                    let b = js_sys::Object::new();
                    set(&b, "peer", peer.to_string());
                    set(&b, "addr", addr.to_string());
                    b.into()
                }
                None => JsValue::NULL,
            };
            set(&o, "bootstrap", b);
            set(
                &o,
                "relayAddr",
                s.relay_addr
                    .map_or(JsValue::NULL, |a| JsValue::from(a.to_string())),
            );
            let peers: js_sys::Array = s
                .peers
                .iter()
                .map(|p| JsValue::from(p.to_string()))
                .collect();
            set(&o, "peers", peers);
            Ok(o.into())
        })
    }

    /// Looks up `peer`'s signed node record in the DHT (client mode): resolves with the
    /// verified record (`{ v, peer_id, roles, addrs, ... }`) or `null`.
    #[wasm_bindgen(js_name = getRecord)]
    pub fn get_record(&self, peer_id: String) -> js_sys::Promise {
        let h = self.handle.clone();
        future_to_promise(async move {
            match h.get_node_record(peer(&peer_id)?).await.map_err(p2p_err)? {
                Some(rec) => json_to_js(&rec),
                None => Ok(JsValue::NULL),
            }
        })
    }

    /// Asks `peer` for its record directly (`/kwaainet/info/1.0.0`).
    #[wasm_bindgen(js_name = askInfo)]
    pub fn ask_info(&self, peer_id: String) -> js_sys::Promise {
        let h = self.handle.clone();
        future_to_promise(async move {
            let rec = h.ask_info(peer(&peer_id)?).await.map_err(p2p_err)?;
            json_to_js(&rec)
        })
    }

    /// Opens an inference stream (`/kwaainet/inference/1.0.0`) to the span server `peer`, as
    /// a client: connects first (through our relay's circuit, where the server is a page
    /// with a reservation there, and at `addrs`, the addresses of its signed record a
    /// browser can dial), within `timeoutMs` (default 10 s). Resolves with a
    /// `WasmInferenceStream`.
    #[wasm_bindgen(js_name = openInference, unchecked_return_type = "Promise<WasmInferenceStream>")]
    pub fn open_inference(
        &self,
        #[wasm_bindgen(js_name = peerId)] peer_id: String,
        addrs: Vec<String>,
        #[wasm_bindgen(js_name = timeoutMs)] timeout_ms: f64,
    ) -> js_sys::Promise {
        let h = self.handle.clone();
        future_to_promise(async move {
            let server = peer(&peer_id)?;
            if addrs.len() > browser::MAX_CONNECT_ADDRS {
                return Err(err(
                    P2pCode::InvalidArgument,
                    format_args!(
                        "{} addresses (max {})",
                        addrs.len(),
                        browser::MAX_CONNECT_ADDRS
                    ),
                ));
            }
            let addrs = addrs
                .iter()
                .map(|a| {
                    a.parse::<Multiaddr>().map_err(|e| {
                        err(P2pCode::InvalidArgument, format_args!("address {a:?}: {e}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let limit = if timeout_ms.is_finite() && timeout_ms > 0.0 {
                Duration::from_millis((timeout_ms as u64).min(MAX_DIAL_TIMEOUT_MS))
            } else {
                Duration::from_secs(10)
            };
            let open = Box::pin(h.open_stream(
                server,
                addrs,
                StreamProtocol::new(kwaainet_swarm::protocol::PROTOCOL),
            ));
            match futures::future::select(open, futures_timer::Delay::new(limit)).await {
                futures::future::Either::Left((Ok(stream), _)) => {
                    Ok(crate::client::WasmInferenceStream::new(peer_id, stream).into())
                }
                futures::future::Either::Left((Err(e), _)) => Err(p2p_err(e)),
                futures::future::Either::Right(_) => Err(err(
                    P2pCode::Unreachable,
                    format_args!(
                        "no inference stream to {peer_id} within {} ms",
                        limit.as_millis()
                    ),
                )),
            }
        })
    }

    /// Sends `data` to `peer` through the bootstrap node's relay (`/kwaainet/msg/1.0.0`);
    /// resolves with the round trip in milliseconds once the receiver acknowledged it.
    pub fn send(&self, peer_id: String, data: Vec<u8>) -> js_sys::Promise {
        let h = self.handle.clone();
        future_to_promise(async move {
            let rtt = h.send(peer(&peer_id)?, data).await.map_err(p2p_err)?;
            Ok(JsValue::from(rtt.as_secs_f64() * 1000.0))
        })
    }
}

/// Largest message payload, in bytes.
#[wasm_bindgen(js_name = maxMessageBytes)]
pub fn max_message_bytes() -> usize {
    kwaainet_p2p::msg::MAX_MESSAGE_BYTES
}

/// The crate version.
#[wasm_bindgen(js_name = p2pVersion)]
pub fn p2p_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(v: &JsValue);
}

/// A listener that throws must not stop the event loop: report it like an uncaught error.
fn web_sys_log(e: &JsValue) {
    console_error(e);
}
