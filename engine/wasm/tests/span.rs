//! A page's span server ([`SpanHost`], what `WasmSpanServer` wraps) in the middle of a
//! swarm route: fed frame by frame as the page's P2P node feeds it, it gives the whole
//! model's greedy tokens, counts what it served, and refuses bad options clearly.
#![allow(clippy::unwrap_used)]

#[path = "../../swarm/tests/support/mod.rs"]
mod support;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kwaainet_core::codec::Codec;
use kwaainet_core::generate::CpuSession;
use kwaainet_swarm::protocol::{self, Message};
use kwaainet_swarm::{
    ClientConfig, CodecChoice, Connector, Link, LinkError, LocalServers, ServerConfig, ServerEntry,
    SpanServer, SwarmSession,
};
use kwaainet_wasm::error::ErrorCode;
use kwaainet_wasm::span::{ModelName, SpanHost, SpanOptions};
use support::{MODEL_ID, client_model, greedy, load, prompts, span, whole};

/// Servers of this process, with `page` answered by a [`SpanHost`] through frames.
struct Route {
    page: Arc<Mutex<SpanHost>>,
    next_stream: AtomicU32,
    others: LocalServers,
}

struct PageLink {
    page: Arc<Mutex<SpanHost>>,
    stream: u32,
    queued: VecDeque<Vec<u8>>,
    open: bool,
}

impl Link for PageLink {
    fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        if !self.open {
            return Err(LinkError::Closed("page".into()));
        }
        self.queued.push_back(frame.to_vec());
        Ok(())
    }

    fn recv(&mut self, _max: usize) -> Result<Option<Vec<u8>>, LinkError> {
        let frame = self
            .queued
            .pop_front()
            .ok_or_else(|| LinkError::Closed("page".into()))?;
        let reply = self.page.lock().unwrap().handle(self.stream, &frame);
        self.open = reply.is_some();
        Ok(reply)
    }

    fn close(&mut self) {
        if self.open {
            let close = protocol::encode(&Message::Close, &[]);
            let _ = self.page.lock().unwrap().handle(self.stream, &close);
            self.page.lock().unwrap().close(self.stream);
            self.open = false;
        }
    }
}

/// A dropped link is a stream that ended: the page's P2P node calls `close(stream)`.
impl Drop for PageLink {
    fn drop(&mut self) {
        self.page.lock().unwrap().close(self.stream);
    }
}

impl Connector for Route {
    fn connect(&self, server: &str) -> Result<Box<dyn Link>, LinkError> {
        if server != "page" {
            return self.others.connect(server);
        }
        Ok(Box::new(PageLink {
            page: Arc::clone(&self.page),
            stream: self.next_stream.fetch_add(1, Ordering::Relaxed),
            queued: VecDeque::new(),
            open: true,
        }))
    }
}

fn options(blocks: std::ops::Range<usize>) -> SpanOptions {
    SpanOptions {
        model: ModelName::Id(MODEL_ID.into()),
        blocks,
        cache_tokens: 2048,
        max_length: Some(512),
        max_sessions: 8,
        device: kwaainet_footprint::meter::DeviceClass::Phone,
        region: Some("FR".into()),
    }
}

#[test]
fn a_page_span_between_native_spans_gives_the_whole_models_tokens() {
    let Some(full) = whole() else {
        return;
    };
    let bytes = std::fs::read(support::common::model_path().unwrap()).unwrap();
    let page = SpanHost::load(&bytes, options(10..20)).unwrap();
    let others = LocalServers::new();
    for (id, blocks) in [("a", 0..10), ("c", 20..30)] {
        let model = load(span(blocks)).unwrap();
        let config = ServerConfig {
            cache_tokens: 2048,
            max_length: 512,
            ..ServerConfig::new(MODEL_ID)
        };
        others.add(id, Arc::new(SpanServer::new(model, config)));
    }
    let route = Arc::new(Route {
        page: Arc::new(Mutex::new(page)),
        next_stream: AtomicU32::new(1),
        others,
    });
    let entries = vec![
        ServerEntry::new("a", 0..10),
        ServerEntry::new("page", 10..20),
        ServerEntry::new("c", 20..30),
    ];
    let prompt = &prompts()[0];
    let mut alone = CpuSession::new(&*full, 256).unwrap();
    let want = greedy(&mut alone, prompt, 16, |_| {});
    let mut positions = 0u64;
    let mut route_energy = 0;
    for push in [false, true] {
        let config = ClientConfig {
            codec: CodecChoice::Fixed(Codec::F32),
            max_length: 256,
            push,
            ..ClientConfig::new(MODEL_ID)
        };
        let connector: Arc<dyn Connector> = route.clone();
        let mut s = SwarmSession::new(
            client_model().unwrap(),
            entries.clone(),
            connector,
            config,
            format!("page-{push}"),
        );
        assert_eq!(greedy(&mut s, prompt, 16, |_| {}), want, "push {push}");
        assert_eq!(s.stats().failovers, 0);
        // Only the page accounts its steps here: the route's footprint is the page's.
        let f = s
            .stats()
            .hops_footprint
            .clone()
            .expect("the page's footprint");
        assert_eq!(f.regions, ["FR"]);
        assert_eq!(f.energy_method, kwaainet_footprint::Method::Modelled);
        route_energy += f.energy_uwh;
        positions += prompt.len() as u64 + 15;
    }
    let st = route.page.lock().unwrap().stats();
    assert_eq!((st.start, st.end), (10, 20));
    assert_eq!(st.served.sessions, 2);
    assert_eq!(st.served.steps, 32);
    assert_eq!(st.served.tokens, positions);
    assert_eq!(st.served.block_tokens, 10 * positions);
    assert_eq!(st.served.bytes_in, 4 * 576 * positions);
    assert_eq!(st.served.bytes_in, st.served.bytes_out);
    assert!(st.served.busy_us > 0);
    // The page's energy: what its clients were told, about 2 W (a phone) × its busy time,
    // at France's grid.
    assert_eq!(st.energy_uwh, route_energy);
    let modelled = 2_000 * st.served.busy_us / 3_600_000;
    assert!(st.energy_uwh.abs_diff(modelled) <= 32, "{st:?}");
    let france = kwaainet_footprint::grid::mix("FR")
        .unwrap()
        .intensity_mg_per_kwh;
    assert_eq!(st.intensity_mg_per_kwh, france);
    // Carbon is rounded step by step: within a microgram a step of the total's.
    let whole =
        kwaainet_footprint::formula::carbon(kwaainet_footprint::Energy(st.energy_uwh), france).0;
    assert!(st.carbon_ug.abs_diff(whole) <= 32, "{st:?}");
    // The sessions ended with their streams: the whole cache is free again.
    assert_eq!(
        (st.sessions_open, st.connections, st.free_cache),
        (0, 0, 2048)
    );
}

#[test]
fn bad_span_options_are_clear_errors() {
    let Some(path) = support::common::model_path() else {
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let bad = [
        options(10..10),
        options(20..31),
        SpanOptions {
            model: ModelName::Id(String::new()),
            ..options(0..1)
        },
        SpanOptions {
            model: ModelName::Sha256("abc".into()),
            ..options(0..1)
        },
        SpanOptions {
            model: ModelName::Sha256("g".repeat(64)),
            ..options(0..1)
        },
        SpanOptions {
            cache_tokens: 0,
            ..options(0..1)
        },
        SpanOptions {
            max_length: Some(4096),
            ..options(0..1)
        },
        SpanOptions {
            max_sessions: 0,
            ..options(0..1)
        },
        SpanOptions {
            region: Some("Atlantis".into()),
            ..options(0..1)
        },
    ];
    for o in bad {
        let e = SpanHost::load(&bytes, o.clone()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{o:?}: {e}");
    }
    let e = SpanHost::load(&bytes[..1000], options(0..1)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Gguf, "{e}");
}

/// A page names its span from the file's SHA-256 exactly as a native node does, so clients
/// looking for the node's model id find the page too.
#[test]
fn a_span_named_by_its_sha256_gets_the_native_nodes_model_id() {
    let Some(path) = support::common::model_path() else {
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let gguf = kwaainet_core::gguf::Gguf::read(&mut std::io::Cursor::new(&bytes[..])).unwrap();
    let hex = "0123456789ABCDEF".repeat(4);
    let host = SpanHost::load(
        &bytes,
        SpanOptions {
            model: ModelName::Sha256(hex.clone()),
            ..options(0..1)
        },
    )
    .unwrap();
    assert_eq!(
        host.model_id(),
        kwaainet_swarm::model_id(&gguf, &hex.to_ascii_lowercase())
    );
    assert!(
        host.model_id().ends_with("@0123456789abcdef"),
        "{}",
        host.model_id()
    );
}
