//! A page's swarm client ([`SwarmClient`], what `WasmSwarmClient` wraps): the embedding and
//! head here, every block on span servers. Its greedy output is llama.cpp's reference, token
//! for token; a server that dies mid-generation is replaced (history replayed) with the
//! output unchanged; a model nobody covers, and bad arguments, are clear errors.
#![allow(clippy::unwrap_used)]

#[path = "../../swarm/tests/support/mod.rs"]
mod support;

use std::sync::Arc;

use kwaainet_core::codec::Codec;
use kwaainet_swarm::{CodecChoice, Connector, LocalServers, ServerConfig, ServerEntry, SpanServer};
use kwaainet_wasm::engine::Request;
use kwaainet_wasm::error::ErrorCode;
use kwaainet_wasm::span::ModelName;
use kwaainet_wasm::swarm_client::{SwarmClient, SwarmRoute, codec_choice};
use support::{MODEL_ID, load, span};

/// The client, or `None` (the test skips) when the model is absent.
fn client() -> Option<SwarmClient> {
    let bytes = std::fs::read(support::common::model_path()?).unwrap();
    Some(SwarmClient::load(&bytes, ModelName::Id(MODEL_ID.into()), Some(512)).unwrap())
}

/// Span servers `(id, blocks)` in this process.
fn servers(spans: &[(&str, std::ops::Range<usize>)]) -> LocalServers {
    let local = LocalServers::new();
    for (id, blocks) in spans {
        let config = ServerConfig {
            cache_tokens: 2048,
            max_length: 512,
            ..ServerConfig::new(MODEL_ID)
        };
        let model = load(span(blocks.clone())).unwrap();
        local.add(id, Arc::new(SpanServer::new(model, config)));
    }
    local
}

fn route(spans: &[(&str, std::ops::Range<usize>)], session: &str) -> SwarmRoute {
    SwarmRoute {
        servers: spans
            .iter()
            .map(|(id, b)| ServerEntry::new(*id, b.clone()))
            .collect(),
        codec: CodecChoice::Fixed(Codec::F32),
        session_id: session.into(),
    }
}

/// A greedy request for the reference case's prompt ids.
fn request(prompt: &[u32], max_tokens: u32) -> Request {
    Request {
        tokens: Some(prompt.to_vec()),
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..Request::default()
    }
}

/// Steps generation `id` one token at a time until done; `each(i)` runs after step `i`.
fn run(c: &mut SwarmClient, id: u64, mut each: impl FnMut(usize)) -> Vec<u32> {
    let mut out = Vec::new();
    for i in 0..10_000 {
        let r = c.step(id, 1).unwrap();
        out.extend(r.tokens);
        each(i);
        if r.done {
            return out;
        }
    }
    panic!("the generation did not finish");
}

/// llama.cpp's greedy outputs on an x86-64 AVX2 CPU (the engine's kernels reproduce its
/// arithmetic there, and on simd128 and NEON): (prompt ids, output ids).
fn cases() -> Vec<(Vec<u32>, Vec<u32>)> {
    let reference: serde_json::Value = serde_json::from_str(include_str!(
        "../../core/tests/data/smollm2-135m-q4_1.llamacpp-avx2.json"
    ))
    .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
            .collect()
    };
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (ids(&c["prompt_ids"]), ids(&c["output_ids"])))
        .collect()
}

/// `got` is llama.cpp's `want`: all of it where the kernels reproduce llama.cpp's AVX2
/// arithmetic, else (portable kernels, other rounding) the first 16 ids, as the core's
/// reference tests check. The engine stops at the end-of-generation id, llama.cpp's chat
/// cases ran past it: the common part is compared.
fn assert_reference(got: &[u32], want: &[u32], what: &str) {
    let n = if kwaainet_core::kernels::bit_exact_with_avx2() {
        want.len()
    } else {
        16
    };
    let n = n.min(want.len()).min(got.len());
    assert!(n >= 8.min(want.len()), "{what}: only {} ids", got.len());
    assert_eq!(&got[..n], &want[..n], "{what}");
}

#[test]
fn the_page_client_gives_llama_cpps_tokens_through_three_servers() {
    let Some(mut c) = client() else {
        return;
    };
    assert_eq!(c.blocks(), 30);
    let spans = [("a", 0..10), ("b", 10..20), ("c", 20..30)];
    let local: Arc<dyn Connector> = Arc::new(servers(&spans));
    for (i, (prompt, want)) in cases().iter().enumerate() {
        let id = c
            .start(
                &request(prompt, want.len() as u32),
                route(&spans, &format!("s{i}")),
                Arc::clone(&local),
            )
            .unwrap();
        let got = run(&mut c, id, |_| {});
        assert_reference(&got, want, &format!("case {i}"));
        let report = c.report(id).unwrap();
        let hops: Vec<_> = report.route.iter().map(|h| h.server.as_str()).collect();
        assert_eq!(hops, ["a", "b", "c"]);
        assert_eq!((report.failovers, report.replays), (0, 0));
        assert!(report.bytes_sent > 0 && report.bytes_received > 0);
    }
}

#[test]
fn a_server_that_dies_mid_generation_is_replaced_without_a_changed_token() {
    let Some(mut c) = client() else {
        return;
    };
    let spans = [("a", 0..15), ("b", 15..30), ("b2", 15..30)];
    let local = servers(&spans);
    let connector: Arc<dyn Connector> = Arc::new(local.clone());
    let (prompt, want) = cases().remove(0);
    let id = c
        .start(
            &request(&prompt, want.len() as u32),
            route(&spans, "die"),
            Arc::clone(&connector),
        )
        .unwrap();
    let mut killed = None;
    let got = run(&mut c, id, |i| {
        if i == 3 {
            let r = c_route_server(&local, ["b", "b2"]);
            local.kill(r);
            killed = Some(r);
        }
    });
    assert!(killed.is_some());
    assert_reference(&got, &want, "with a failover");
    let report = c.report(id).unwrap();
    assert_eq!(report.failovers, 1, "{report:?}");
    assert_eq!(report.replays, 1, "{report:?}");
    assert!(
        !report
            .route
            .iter()
            .any(|h| Some(h.server.as_str()) == killed)
    );
}

/// Which of `ids` has an open session (the one the route took).
fn c_route_server(local: &LocalServers, ids: [&'static str; 2]) -> &'static str {
    ids.into_iter()
        .find(|id| local.get(id).is_some_and(|s| s.sessions() > 0))
        .unwrap()
}

#[test]
fn no_route_and_bad_arguments_are_clear_errors() {
    let Some(mut c) = client() else {
        return;
    };
    let spans = [("a", 0..20)];
    let connector: Arc<dyn Connector> = Arc::new(servers(&spans));
    let (prompt, _) = cases().remove(0);
    // Nobody serves blocks 20..30: the first step fails, naming them, as a swarm error.
    let id = c
        .start(
            &request(&prompt, 4),
            route(&spans, "gap"),
            Arc::clone(&connector),
        )
        .unwrap();
    let e = c.step(id, 1).unwrap_err();
    assert_eq!(e.code, ErrorCode::Swarm, "{e}");
    assert!(e.message.contains("20..30"), "{e}");
    // The generation ended with it.
    assert_eq!(c.step(id, 1).unwrap_err().code, ErrorCode::Generation);

    let bad_routes = [
        route(&[], "empty"),
        route(&[("a", 0..31)], "past-the-model"),
        route(&[("a", 5..5)], "no-blocks"),
        route(&[("", 0..30)], "no-id"),
        route(&[("a", 0..30)], ""),
    ];
    for r in bad_routes {
        let what = format!("{:?}", r.servers);
        let e = c
            .start(&request(&prompt, 4), r, Arc::clone(&connector))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{what}: {e}");
    }
    let e = c
        .start(
            &Request {
                max_tokens: Some(4),
                ..Request::default()
            },
            route(&spans, "no-prompt"),
            Arc::clone(&connector),
        )
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    assert_eq!(codec_choice("f16").unwrap(), CodecChoice::Fixed(Codec::F16));
    assert_eq!(codec_choice("auto").unwrap(), CodecChoice::Auto);
    assert_eq!(
        codec_choice("f8").unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    // The wrong model id is caught when the model is loaded.
    let bytes = std::fs::read(support::common::model_path().unwrap()).unwrap();
    let e = SwarmClient::load(&bytes, ModelName::Sha256("xyz".into()), None).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    let e = SwarmClient::load(&bytes, ModelName::Id(MODEL_ID.into()), Some(0)).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
}
