//! Generation through span servers with the real default model: the route, the codecs,
//! failover with history replay, `busy`, a missing span, and hostile clients. Servers run in
//! this process ([`LocalServers`]); every frame still goes through the wire format.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod support;

use support::{MODEL_ID, argmax, client_model, greedy, load, prompts, span, whole};

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kwaainet_core::codec::Codec;
use kwaainet_core::generate::{CpuSession, Session};
use kwaainet_swarm::protocol::{self, FailKind, Message, Open, Push, PushTo, Step};
use kwaainet_swarm::{
    ClientConfig, CodecChoice, LocalServers, ServerConfig, ServerEntry, SpanServer, SwarmError,
    SwarmSession,
};

fn server_config(cache_tokens: usize) -> ServerConfig {
    ServerConfig {
        cache_tokens,
        max_length: 512,
        push_wait: Duration::from_secs(1),
        ..ServerConfig::new(MODEL_ID)
    }
}

/// Servers `(id, blocks)` in this process, and their directory entries.
fn swarm(spans: &[(&str, Range<usize>)]) -> Option<(LocalServers, Vec<ServerEntry>)> {
    let servers = LocalServers::new();
    let mut entries = Vec::new();
    for (id, blocks) in spans {
        let model = load(span(blocks.clone()))?;
        servers.add(id, Arc::new(SpanServer::new(model, server_config(4096))));
        entries.push(ServerEntry::new((*id).to_owned(), blocks.clone()));
    }
    Some((servers, entries))
}

fn config(codec: Codec) -> ClientConfig {
    ClientConfig {
        codec: CodecChoice::Fixed(codec),
        max_length: 256,
        ..ClientConfig::new(MODEL_ID)
    }
}

fn config_push(codec: Codec, push: bool) -> ClientConfig {
    ClientConfig {
        push,
        ..config(codec)
    }
}

#[test]
fn three_spans_generate_exactly_what_the_whole_model_does_with_f32() {
    let Some(full) = whole() else {
        return;
    };
    let (servers, entries) = swarm(&[("a", 0..10), ("b", 10..20), ("c", 20..30)]).unwrap();
    let local = client_model().unwrap();
    let dim = full.config().dim;
    let mut positions = 0u64;
    for (k, prompt) in prompts().iter().enumerate() {
        let mut alone = CpuSession::new(&*full, 256).unwrap();
        let want = greedy(&mut alone, prompt, 24, |_| {});
        positions += 2 * (prompt.len() as u64 + 23);
        // Each output back to the client and on, or pushed from server to server.
        for push in [false, true] {
            let mut s = SwarmSession::new(
                Arc::clone(&local),
                entries.clone(),
                Arc::new(servers.clone()),
                config_push(Codec::F32, push),
                format!("case-{k}-{push}"),
            );
            let got = greedy(&mut s, prompt, 24, |_| {});
            assert_eq!(got, want, "case {k}, push {push}");
            assert_eq!(
                s.route(),
                vec![
                    ("a".into(), 0..10),
                    ("b".into(), 10..20),
                    ("c".into(), 20..30)
                ]
            );
            let st = s.stats().clone();
            assert_eq!(st.steps, 3 * 24);
            assert_eq!((st.failovers, st.replays), (0, 0));
            // f32: 4 bytes per value. Pushed, the client sends only the first hop's input
            // and the two others get theirs from the server before them.
            let per_hop = 4 * dim * (prompt.len() + 23);
            if push {
                assert_eq!((st.bytes_sent, st.pushed), (per_hop, 2 * 24), "{st:?}");
            } else {
                assert_eq!((st.bytes_sent, st.pushed), (3 * per_hop, 0), "{st:?}");
            }
            assert_eq!(st.bytes_received, 3 * per_hop);
        }
    }
    // Every session closed: the servers' budgets are whole again.
    let cases = prompts().len() as u64;
    for id in ["a", "b", "c"] {
        let s = servers.get(id).unwrap();
        assert_eq!((s.sessions(), s.free_tokens()), (0, 4096), "{id}");
        // What each served, counted as a contributor sees it.
        let st = s.stats();
        let bytes = 4 * dim as u64 * positions;
        assert_eq!(
            (st.sessions, st.steps, st.tokens, st.block_tokens),
            (2 * cases, 2 * cases * 24, positions, 10 * positions),
            "{id}"
        );
        assert_eq!((st.bytes_in, st.bytes_out), (bytes, bytes), "{id}");
        assert!(st.busy_us > 0, "{id}");
    }
}

/// A server that must not block waiting for a pushed input (a page's worker: `push_wait`
/// zero) answers such a step `no-input` when the input is not there yet, and the client
/// sends it: the tokens are the same.
#[test]
fn a_server_that_cannot_wait_for_pushes_gives_the_same_tokens() {
    let Some(full) = whole() else {
        return;
    };
    let servers = LocalServers::new();
    let mut entries = Vec::new();
    for (id, blocks, wait) in [("a", 0..10, 1), ("page", 10..20, 0), ("c", 20..30, 1)] {
        let model = load(span(blocks.clone())).unwrap();
        let config = ServerConfig {
            push_wait: Duration::from_secs(wait),
            ..server_config(4096)
        };
        servers.add(id, Arc::new(SpanServer::new(model, config)));
        entries.push(ServerEntry::new(id.to_owned(), blocks));
    }
    let local = client_model().unwrap();
    let prompt = &prompts()[0];
    let mut alone = CpuSession::new(&*full, 256).unwrap();
    let want = greedy(&mut alone, prompt, 16, |_| {});
    let mut s = SwarmSession::new(
        local,
        entries,
        Arc::new(servers.clone()),
        config_push(Codec::F32, true),
        "no-wait",
    );
    assert_eq!(greedy(&mut s, prompt, 16, |_| {}), want);
    assert_eq!(s.stats().failovers, 0);
    assert_eq!(servers.get("page").unwrap().stats().steps, 16);
}

#[test]
fn lossy_codecs_keep_the_greedy_answer() {
    let Some(full) = whole() else {
        return;
    };
    let (servers, entries) = swarm(&[("a", 0..10), ("b", 10..20), ("c", 20..30)]).unwrap();
    let local = client_model().unwrap();
    let prompt = &prompts()[0];
    let mut alone = CpuSession::new(&*full, 256).unwrap();
    let want = greedy(&mut alone, prompt, 16, |_| {});
    for codec in [Codec::F16, Codec::Q8_0, Codec::Blockwise8] {
        let mut s = SwarmSession::new(
            Arc::clone(&local),
            entries.clone(),
            Arc::new(servers.clone()),
            config(codec),
            codec.name(),
        );
        // Teacher-forced: feed the whole model's tokens, compare the top-1 at each step.
        let mut logits = s.forward_tokens(prompt).unwrap();
        let mut agree = 0;
        for (i, &t) in want.iter().enumerate() {
            agree += usize::from(argmax(&logits) == t);
            if i + 1 < want.len() {
                logits = s.forward_tokens(&[t]).unwrap();
            }
        }
        eprintln!(
            "{codec}: top-1 agreement {agree}/{} , {} bytes sent",
            want.len(),
            s.stats().bytes_sent
        );
        assert!(
            agree * 100 >= want.len() * 97,
            "{codec}: {agree}/{}",
            want.len()
        );
        // Free-running: the first 16 greedy ids are the whole model's.
        let mut s = SwarmSession::new(
            Arc::clone(&local),
            entries.clone(),
            Arc::new(servers.clone()),
            config(codec),
            format!("{codec}-free"),
        );
        assert_eq!(greedy(&mut s, prompt, 16, |_| {}), want, "{codec}");
    }
}

#[test]
fn a_server_killed_mid_generation_is_replaced_and_the_output_is_the_same() {
    let Some((servers, entries)) =
        swarm(&[("a", 0..10), ("b1", 10..20), ("b2", 10..20), ("c", 20..30)])
    else {
        return;
    };
    let local = client_model().unwrap();
    let prompt = &prompts()[1];
    let connector = Arc::new(servers.clone());
    let mut calm = SwarmSession::new(
        Arc::clone(&local),
        entries.clone(),
        connector.clone(),
        config(Codec::F32),
        "calm",
    );
    let want = greedy(&mut calm, prompt, 20, |_| {});
    let first = calm.route()[1].0.clone();
    drop(calm);
    // Without push the client sends the killed hop's input; with push the server before it
    // fails to push there, and the replacement pushes on to the next hop's waiting step.
    for push in [false, true] {
        let in_use = first.clone();
        let mut s = SwarmSession::new(
            Arc::clone(&local),
            entries.clone(),
            connector.clone(),
            config_push(Codec::F32, push),
            format!("killed-{push}"),
        );
        let got = greedy(&mut s, prompt, 20, |i| {
            if i == 7 {
                servers.kill(&in_use);
            }
        });
        assert_eq!(got, want, "push {push}");
        let st = s.stats();
        assert_eq!((st.failovers, st.replays), (1, 1), "{st:?}");
        let other = if in_use == "b1" { "b2" } else { "b1" };
        assert_eq!(s.route()[1], (other.to_owned(), 10..20));
        assert!(
            s.banned()
                .iter()
                .any(|(id, d)| *id == in_use && *d > Duration::from_secs(10))
        );
        drop(s);
        // Back to four servers for the second run.
        servers.add(
            &in_use,
            Arc::new(SpanServer::new(
                load(span(10..20)).unwrap(),
                server_config(4096),
            )),
        );
    }
}

#[test]
fn a_missing_span_fails_at_once_naming_the_blocks() {
    let Some((servers, entries)) = swarm(&[("a", 0..10), ("c", 20..30)]) else {
        return;
    };
    let mut s = SwarmSession::new(
        client_model().unwrap(),
        entries,
        Arc::new(servers),
        config(Codec::F16),
        "gap",
    );
    let started = Instant::now();
    match s.forward_tokens(&[1, 2, 3]) {
        Err(SwarmError::NoRoute { missing }) => assert_eq!(missing, 10..20),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // Through the engine's Session trait the error keeps its words.
    let e = s.forward(&[1]).unwrap_err().to_string();
    assert!(e.contains("no server covers blocks 10..20"), "{e}");
}

#[test]
fn a_span_lost_mid_generation_ends_the_session_and_frees_every_server() {
    let Some((servers, entries)) = swarm(&[("a", 0..10), ("b", 10..20), ("c", 20..30)]) else {
        return;
    };
    for push in [false, true] {
        let mut s = SwarmSession::new(
            client_model().unwrap(),
            entries.clone(),
            Arc::new(servers.clone()),
            config_push(Codec::F16, push),
            "lost",
        );
        s.forward_tokens(&[1, 4093, 198]).unwrap();
        servers.kill("b");
        // Nobody else serves 10..20: the pass fails naming them, at once.
        let started = Instant::now();
        match s.forward_tokens(&[28]) {
            Err(SwarmError::NoRoute { missing }) => assert_eq!(missing, 10..20),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        // Hop a ran the step and c waits for a push: the session cannot go on, and says so.
        match s.forward_tokens(&[28]) {
            Err(SwarmError::Broken { reason }) => assert!(reason.contains("10..20"), "{reason}"),
            other => panic!("{other:?}"),
        }
        for id in ["a", "c"] {
            let server = servers.get(id).unwrap();
            assert_eq!(server.sessions(), 0, "{id}, push {push}");
        }
        servers.add(
            "b",
            Arc::new(SpanServer::new(
                load(span(10..20)).unwrap(),
                server_config(4096),
            )),
        );
    }
}

#[test]
fn a_full_server_answers_busy_and_the_client_routes_elsewhere() {
    let Some(local) = client_model() else {
        return;
    };
    let servers = LocalServers::new();
    // "small" can hold one session of 256 positions; "big" many.
    let small = Arc::new(SpanServer::new(
        load(span(0..30)).unwrap(),
        server_config(300),
    ));
    let big = Arc::new(SpanServer::new(
        load(span(0..30)).unwrap(),
        server_config(4096),
    ));
    servers.add("small", Arc::clone(&small));
    servers.add("big", Arc::clone(&big));
    let entries = vec![
        ServerEntry::new("small", 0..30),
        ServerEntry::new("big", 0..30),
    ];
    let connector = Arc::new(servers.clone());
    // The first session fills "small" (the planner tries servers in order on equal reach).
    let mut first = SwarmSession::new(
        Arc::clone(&local),
        entries.clone(),
        connector.clone(),
        config(Codec::F16),
        "1",
    );
    first.forward_tokens(&[1, 2]).unwrap();
    assert_eq!(first.route()[0].0, "small");
    assert_eq!(small.free_tokens(), 300 - 256);
    let mut second = SwarmSession::new(local, entries, connector, config(Codec::F16), "2");
    second.forward_tokens(&[1, 2]).unwrap();
    assert_eq!(second.route()[0].0, "big");
    assert!(second.banned().iter().any(|(id, _)| id == "small"));
    drop(first);
    assert_eq!(small.free_tokens(), 300);
}

/// Sends one frame on `conn` and decodes the reply.
fn call(conn: &mut kwaainet_swarm::server::Connection, frame: &[u8]) -> Message {
    let reply = conn.handle(frame).expect("a reply");
    protocol::decode(&reply, usize::MAX).unwrap().message
}

fn protocol_inbox() -> usize {
    kwaainet_swarm::server::INBOX
}

fn fail_kind(m: &Message) -> Option<FailKind> {
    match m {
        Message::Fail(f) => Some(f.kind),
        _ => None,
    }
}

#[test]
fn hostile_clients_get_clear_errors_and_the_server_keeps_serving() {
    let Some(model) = load(span(0..10)) else {
        return;
    };
    let dim = model.config().dim;
    let server = Arc::new(SpanServer::new(model, server_config(1024)));
    let open = |max_length: u32, start: u32, end: u32, codec: &str| {
        protocol::encode(
            &Message::Open(Open {
                session: "x".into(),
                model: MODEL_ID.into(),
                start,
                end,
                max_length,
                codec: codec.into(),
            }),
            &[],
        )
    };
    let step = |id: u64, position: u32, tokens: u32, payload: &[u8]| {
        protocol::encode(
            &Message::Step(Step {
                step: id,
                position,
                tokens,
                codec: None,
                pushed: false,
                push: None,
            }),
            payload,
        )
    };
    let mut c = server.connection();
    // Garbage, a step before open, a message only servers send.
    assert_eq!(
        fail_kind(&call(&mut c, b"\x01garbage")),
        Some(FailKind::BadRequest)
    );
    let one = Codec::F32.encode(&vec![0.1; dim]);
    assert_eq!(
        fail_kind(&call(&mut c, &step(0, 0, 1, &one))),
        Some(FailKind::BadRequest)
    );
    // Absurd or foreign opens.
    assert_eq!(
        fail_kind(&call(&mut c, &open(1 << 30, 0, 10, "f32"))),
        Some(FailKind::BadRequest)
    );
    assert_eq!(
        fail_kind(&call(&mut c, &open(64, 5, 20, "f32"))),
        Some(FailKind::NotServed)
    );
    assert_eq!(
        fail_kind(&call(&mut c, &open(64, 0, 10, "f64"))),
        Some(FailKind::BadRequest)
    );
    assert!(matches!(
        call(&mut c, &open(64, 0, 10, "f32")),
        Message::Opened(_)
    ));
    // Wrong hidden size, a gap in positions, past max_length, a NaN, an oversized payload.
    assert_eq!(
        fail_kind(&call(&mut c, &step(1, 0, 2, &one))),
        Some(FailKind::BadRequest)
    );
    assert_eq!(
        fail_kind(&call(&mut c, &step(2, 5, 1, &one))),
        Some(FailKind::BadRequest)
    );
    assert_eq!(
        fail_kind(&call(&mut c, &step(3, 64, 1, &one))),
        Some(FailKind::BadRequest)
    );
    let nan = Codec::F32.encode(&vec![f32::NAN; dim]);
    assert_eq!(
        fail_kind(&call(&mut c, &step(4, 0, 1, &nan))),
        Some(FailKind::BadRequest)
    );
    let mut huge = step(5, 0, 1, &[]);
    let at = huge.len() - 4;
    huge[at..].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(fail_kind(&call(&mut c, &huge)), Some(FailKind::BadRequest));
    // The session still works; a repeated step id is answered from the stored output.
    let first = c.handle(&step(6, 0, 1, &one)).unwrap();
    assert!(matches!(
        protocol::decode(&first, usize::MAX).unwrap().message,
        Message::Output(_)
    ));
    assert_eq!(c.handle(&step(6, 0, 1, &one)).unwrap(), first);
    // Rolling back to position 0 runs again from there: the same output.
    let again = protocol::decode(&c.handle(&step(7, 0, 1, &one)).unwrap(), usize::MAX).unwrap();
    assert_eq!(
        again.payload,
        protocol::decode(&first, usize::MAX).unwrap().payload
    );
    // Pushes: an unknown key, a wrong size, a flooded inbox; a pushed step whose input never
    // comes is answered `no-input` after the wait, and the session goes on.
    let key = match call(&mut server.connection(), &open(8, 0, 10, "f32")) {
        Message::Opened(o) => o.key,
        other => panic!("{other:?}"),
    };
    assert_eq!(key.len(), 32);
    let mut p = server.connection();
    let Message::Opened(opened) = call(&mut p, &open(8, 0, 10, "f32")) else {
        panic!("open");
    };
    let push = |key: &str, step: u64, tokens: u32, payload: &[u8]| {
        protocol::encode(
            &Message::Push(Push {
                key: key.into(),
                step,
                position: 0,
                tokens,
                codec: "f32".into(),
            }),
            payload,
        )
    };
    let mut other = server.connection();
    assert_eq!(
        fail_kind(&call(&mut other, &push("00", 0, 1, &one))),
        Some(FailKind::BadRequest)
    );
    assert_eq!(
        fail_kind(&call(&mut other, &push(&opened.key, 0, 2, &one))),
        Some(FailKind::BadRequest)
    );
    for id in 0..protocol_inbox() as u64 {
        assert_eq!(
            call(&mut other, &push(&opened.key, 10 + id, 1, &one)),
            Message::Pushed
        );
    }
    assert_eq!(
        fail_kind(&call(&mut other, &push(&opened.key, 99, 1, &one))),
        Some(FailKind::Busy)
    );
    let waiting = |id: u64| {
        protocol::encode(
            &Message::Step(Step {
                step: id,
                position: 0,
                tokens: 1,
                codec: None,
                pushed: true,
                push: None,
            }),
            &[],
        )
    };
    // Step 10's input is there; step 50's never comes (the wait is short in these tests).
    assert!(matches!(call(&mut p, &waiting(10)), Message::Output(_)));
    let started = Instant::now();
    assert_eq!(
        fail_kind(&call(&mut p, &waiting(50))),
        Some(FailKind::NoInput)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A push naming a server this one cannot reach: the output comes back with why.
    let onward = protocol::encode(
        &Message::Step(Step {
            step: 51,
            position: 0,
            tokens: 1,
            codec: None,
            pushed: false,
            push: Some(PushTo {
                server: "nowhere".into(),
                key: "k".into(),
                step: 0,
            }),
        }),
        &one,
    );
    match call(&mut p, &onward) {
        Message::Output(o) => assert!(o.push_error.is_some(), "{o:?}"),
        other => panic!("{other:?}"),
    }
    drop((p, other));
    // A flood of sessions: each reserves 512 of the 1024 positions; the third is busy.
    let mut conns: Vec<_> = (0..2).map(|_| server.connection()).collect();
    assert!(matches!(
        call(&mut conns[0], &open(512, 0, 10, "f16")),
        Message::Opened(_)
    ));
    assert_eq!(
        fail_kind(&call(&mut conns[1], &open(512, 0, 10, "f16"))),
        Some(FailKind::Busy)
    );
    assert_eq!(server.sessions(), 2);
    drop(conns);
    drop(c);
    assert_eq!((server.sessions(), server.free_tokens()), (0, 1024));
}

/// Accounts every step at a fixed 1 mWh on its server's grid, and counts what it returned.
struct FixedMeter {
    region: &'static str,
    returned: std::sync::atomic::AtomicU64,
}

impl kwaainet_swarm::server::StepMeter for FixedMeter {
    fn step(&self, busy: Duration) -> Option<kwaainet_footprint::Footprint> {
        use std::sync::atomic::Ordering;
        let mix = kwaainet_footprint::grid::mix(self.region)?;
        let f = kwaainet_footprint::Footprint::of(
            kwaainet_footprint::Energy(1_000),
            kwaainet_footprint::Method::Modelled,
            &mix,
            busy,
        );
        self.returned.fetch_add(f.carbon_ug, Ordering::SeqCst);
        Some(f)
    }
}

#[test]
fn a_route_reports_the_sum_of_its_hops_footprints_replays_included() {
    use std::sync::atomic::Ordering;
    let Some((servers, entries)) =
        swarm(&[("a", 0..10), ("b1", 10..20), ("b2", 10..20), ("c", 20..30)])
    else {
        return;
    };
    let meters: Vec<(&str, Arc<FixedMeter>)> =
        [("a", "DE"), ("b1", "FR"), ("b2", "FR"), ("c", "SE")]
            .into_iter()
            .map(|(id, region)| {
                let m = Arc::new(FixedMeter {
                    region,
                    returned: Default::default(),
                });
                servers.get(id).unwrap().set_meter(m.clone());
                (id, m)
            })
            .collect();
    let local = client_model().unwrap();
    let prompt = &prompts()[1];
    for push in [false, true] {
        for (_, m) in &meters {
            m.returned.store(0, Ordering::SeqCst);
        }
        let mut s = SwarmSession::new(
            Arc::clone(&local),
            entries.clone(),
            Arc::new(servers.clone()),
            config_push(Codec::F32, push),
            format!("footprint-{push}"),
        );
        let mut killed = None;
        greedy(&mut s, prompt, 12, |i| {
            if i == 5 {
                let id = s_route_middle(&servers);
                servers.kill(&id);
                killed = Some(id);
            }
        });
        let st = s.stats().clone();
        assert_eq!(st.replays, 1, "{st:?}");
        let f = st.hops_footprint.clone().expect("the hops' footprints");
        // Every step a server ran reached the client, the replayed history too: 1 mWh each.
        assert_eq!(f.energy_uwh, 1_000 * st.steps as u64, "{st:?}");
        let carbon: u64 = meters
            .iter()
            .map(|(_, m)| m.returned.load(Ordering::SeqCst))
            .sum();
        assert_eq!(f.carbon_ug, carbon);
        assert_eq!(f.regions, ["DE", "FR", "SE"]);
        assert_eq!(f.energy_method, kwaainet_footprint::Method::Modelled);
        assert!(st.local_busy > Duration::ZERO);
        drop(s);
        let id = killed.unwrap();
        let server = Arc::new(SpanServer::new(
            load(span(10..20)).unwrap(),
            server_config(4096),
        ));
        let m = meters.iter().find(|(k, _)| *k == id).unwrap().1.clone();
        server.set_meter(m);
        servers.add(&id, server);
    }
}

/// The server of blocks 10..20 the session in flight uses (the one holding a session).
fn s_route_middle(servers: &LocalServers) -> String {
    let busy = |id: &str| servers.get(id).is_some_and(|s| s.sessions() > 0);
    if busy("b1") { "b1" } else { "b2" }.to_owned()
}
