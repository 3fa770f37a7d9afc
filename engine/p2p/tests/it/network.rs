//! Real nodes over loopback TCP (noise + yamux): DHT discovery among five nodes, a DHT
//! client that stays out of routing tables, the model registry, `/kwaainet/info`, and
//! hostile peers sending oversized or garbled messages.
//!
//! Every wait is bounded ([`within`]); a test that hangs fails instead.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use kwaainet_p2p::libp2p::identity::Keypair;
use kwaainet_p2p::libp2p::swarm::SwarmEvent;
use kwaainet_p2p::libp2p::{Multiaddr, PeerId, StreamProtocol, SwarmBuilder, noise, tcp, yamux};
use kwaainet_p2p::record::{Role, ServedSpan};
use kwaainet_p2p::{NodeConfig, NodeHandle};
use tokio::sync::mpsc;

async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .with_context(|| format!("timed out after {secs} s: {what}"))
}

fn config(full: bool, bootstrap: Vec<Multiaddr>) -> NodeConfig {
    NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("static address")],
        bootstrap,
        full,
        allow_local_addrs: true,
        autonat: false,
        ..NodeConfig::default()
    }
}

async fn start(cfg: NodeConfig) -> Result<NodeHandle> {
    Ok(kwaainet_p2p::spawn(cfg, Keypair::generate_ed25519(), None).await?)
}

fn tcp_addr(node: &NodeHandle) -> Result<Multiaddr> {
    node.listen_addrs()
        .iter()
        .find(|a| a.to_string().contains("/tcp/") && !a.to_string().contains("/ws"))
        .cloned()
        .context("node has no TCP address")
}

/// Retries `f` every 200 ms until it returns `Some`, for at most `secs` seconds.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("not within {secs} s: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_bootstrap_off_one_and_find_each_others_records() -> Result<()> {
    let boot = start(config(true, vec![])).await?;
    let boot_addr = tcp_addr(&boot)?;
    let mut nodes = vec![boot.clone()];
    for i in 1..5 {
        let mut cfg = config(true, vec![boot_addr.clone()]);
        if i == 2 {
            cfg.spans = vec![ServedSpan::new("smollm2-135m", 0, 30)];
        }
        nodes.push(start(cfg).await?);
    }
    // A DHT client (like a browser): it may query and publish, but must stay out of the
    // servers' routing tables.
    let client = start(config(false, vec![boot_addr.clone()])).await?;

    // Each node's record reaches the DHT once it has peers.
    for n in nodes.iter().chain([&client]) {
        eventually(20, "publish a record", || async { n.publish().await.ok() }).await?;
    }

    // Every node finds every other node's record through the DHT, verified and complete.
    for a in &nodes {
        for b in &nodes {
            let rec = eventually(20, "find a record", || async {
                a.get_node_record(b.peer_id()).await.ok().flatten()
            })
            .await?;
            assert_eq!(rec.peer_id, b.peer_id());
            assert!(rec.roles.contains(&Role::Full));
            assert!(!rec.addrs.is_empty(), "a record without addresses");
            for e in &rec.addrs {
                let s = e.addr.to_string();
                assert!(s.starts_with("/ip4/127.0.0.1/"), "announced {s}");
                assert!(!e.relayed);
            }
        }
    }
    assert!(
        nodes[0]
            .get_node_record(boot.peer_id())
            .await?
            .is_some_and(|r| r.roles.contains(&Role::Bootstrap))
    );
    // The client's record is findable too, marked as a client.
    let crec = eventually(20, "find the client's record", || async {
        nodes[3]
            .get_node_record(client.peer_id())
            .await
            .ok()
            .flatten()
    })
    .await?;
    assert_eq!(crec.roles, vec![Role::Client]);

    // The model registry: node 2 serves the model, others find it.
    let providers = eventually(20, "find the model's provider", || async {
        let p = nodes[4].model_providers("smollm2-135m").await.ok()?;
        (!p.is_empty()).then_some(p)
    })
    .await?;
    assert_eq!(providers, vec![nodes[2].peer_id()]);
    let rec = nodes[4]
        .get_node_record(providers[0])
        .await?
        .context("provider record")?;
    assert_eq!(rec.spans[0].end, 30);

    // Client mode: the bootstrap node is connected to the client but keeps it out of its
    // routing table, which holds exactly the four servers.
    let st = boot.state().await?;
    assert!(
        st.connected_peers
            .iter()
            .any(|p| p.peer_id == client.peer_id())
    );
    assert_eq!(st.routing_table_peers, 4, "routing table: {st:?}");
    assert_eq!(st.kad_mode, kwaainet_p2p::KadMode::Server);
    assert_eq!(
        client.state().await?.kad_mode,
        kwaainet_p2p::KadMode::Client
    );

    // A direct one-round-trip question over /kwaainet/info/1.0.0.
    let direct = boot.ask_info(client.peer_id()).await?;
    assert_eq!(direct.peer_id, client.peer_id());

    for n in nodes.iter().chain([&client]) {
        within(10, "shutdown", n.shutdown()).await?;
    }
    Ok(())
}

// ---- hostile peers ---------------------------------------------------------------------

/// A raw libp2p peer that can open any protocol and write arbitrary bytes.
struct Hostile {
    control: libp2p_stream::Control,
    closed: mpsc::Receiver<PeerId>,
    dial: mpsc::Sender<Multiaddr>,
}

fn hostile() -> Result<Hostile> {
    let mut swarm = SwarmBuilder::with_existing_identity(Keypair::generate_ed25519())
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let control = swarm.behaviour().new_control();
    let (closed_tx, closed) = mpsc::channel(16);
    let (dial, mut dial_rx) = mpsc::channel::<Multiaddr>(4);
    tokio::spawn(async move {
        // Stops by itself after 60 s at most.
        let end = tokio::time::sleep(Duration::from_secs(60));
        tokio::pin!(end);
        loop {
            tokio::select! {
                _ = &mut end => break,
                Some(a) = dial_rx.recv() => { let _ = swarm.dial(a); }
                ev = swarm.select_next_some() => {
                    if let SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } = ev {
                        let _ = closed_tx.try_send(peer_id);
                    }
                }
            }
        }
    });
    Ok(Hostile {
        control,
        closed,
        dial,
    })
}

/// Opens `protocol` on `node` from a fresh hostile peer and writes `bytes`.
async fn send_raw(node: &NodeHandle, protocol: &'static str, bytes: &[u8]) -> Result<Hostile> {
    let h = hostile()?;
    h.dial.send(tcp_addr(node)?).await?;
    let mut stream = eventually(10, "open a stream", || {
        let mut c = h.control.clone();
        let p = node.peer_id();
        async move { c.open_stream(p, StreamProtocol::new(protocol)).await.ok() }
    })
    .await?;
    // The write may fail midway once the node resets the stream: that is fine.
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    // The node must close the stream, never hang on it.
    let mut buf = vec![0u8; 1024];
    let read = within(15, "the node closes a bad stream", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    read?;
    Ok(h)
}

async fn assert_disconnected(h: &mut Hostile, node: &NodeHandle) -> Result<()> {
    let peer = within(15, "the node disconnects the hostile peer", h.closed.recv()).await?;
    assert_eq!(peer, Some(node.peer_id()));
    Ok(())
}

/// The node still works for honest peers after the abuse.
async fn assert_healthy(node: &NodeHandle, honest: &NodeHandle) -> Result<()> {
    let rec = within(15, "an honest peer asks", honest.ask_info(node.peer_id())).await??;
    assert_eq!(rec.peer_id, node.peer_id());
    let st = node.state().await?;
    assert!(
        st.connected_peers
            .iter()
            .any(|p| p.peer_id == honest.peer_id())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_disconnected_and_the_node_keeps_serving() -> Result<()> {
    let node = start(config(true, vec![])).await?;
    let honest = start(config(true, vec![tcp_addr(&node)?])).await?;
    eventually(15, "honest peer connects", || async {
        let st = node.state().await.ok()?;
        st.connected_peers
            .iter()
            .any(|p| p.peer_id == honest.peer_id())
            .then_some(())
    })
    .await?;

    // /kwaainet/info: a 4 GiB length prefix (refused before allocating), then a well-sized
    // frame of garbage. Each sender is disconnected.
    let mut h = send_raw(&node, "/kwaainet/info/1.0.0", &u32::MAX.to_be_bytes()).await?;
    assert_disconnected(&mut h, &node).await?;
    let mut garbage = 64u32.to_be_bytes().to_vec();
    garbage.extend((0..64u8).map(|i| i.wrapping_mul(37) ^ 0xa5));
    let mut h = send_raw(&node, "/kwaainet/info/1.0.0", &garbage).await?;
    assert_disconnected(&mut h, &node).await?;
    assert_eq!(node.state().await?.misbehaving_peers, 2);
    assert_healthy(&node, &honest).await?;

    // Kademlia: an unsigned-varint length of 1 GiB followed by junk, and a short frame of
    // junk that is not protobuf. The node closes each stream (checked in send_raw).
    let mut huge = vec![0x80, 0x80, 0x80, 0x80, 0x04];
    huge.extend([0xffu8; 4096]);
    send_raw(&node, "/kwaainet/kad/1.0.0", &huge).await?;
    let mut junk = vec![40u8];
    junk.extend([0xffu8; 40]);
    send_raw(&node, "/kwaainet/kad/1.0.0", &junk).await?;
    assert_healthy(&node, &honest).await?;
    // And the DHT still answers the honest peer.
    within(15, "publish after abuse", honest.publish()).await??;
    let rec = within(
        15,
        "lookup after abuse",
        honest.get_node_record(node.peer_id()),
    )
    .await??;
    assert!(rec.is_some());

    within(10, "shutdown", node.shutdown()).await?;
    within(10, "shutdown", honest.shutdown()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_records_pushed_over_kad_are_not_stored() -> Result<()> {
    use kwaainet_p2p::libp2p::core::SignedEnvelope;
    use kwaainet_p2p::libp2p::kad::{Quorum, Record, RecordKey};
    use kwaainet_p2p::record::{AddressEntry, NODE_RECORD_VERSION, NodeRecord, node_key};
    use kwaainet_p2p::transport::{TransportKind, build_swarm};

    let node = start(config(true, vec![])).await?;
    let victim = Keypair::generate_ed25519().public().to_peer_id();
    let mallory_key = Keypair::generate_ed25519();
    // Mallory is a real KwaaiNet DHT peer that PUT_VALUEs records the node must refuse.
    let mut reg = Default::default();
    let mut mallory = build_swarm(
        mallory_key.clone(),
        &config(true, vec![]),
        TransportKind::Network { webrtc_pem: None },
        &mut reg,
    )
    .await?;
    let rec = NodeRecord {
        v: NODE_RECORD_VERSION,
        peer_id: victim,
        roles: vec![Role::Full],
        addrs: vec![AddressEntry::new("/ip4/8.8.8.8/tcp/1".parse()?)],
        accelerator: Default::default(),
        version: "evil".into(),
        region: None,
        spans: vec![],
        hosted: vec![],
        contribution: None,
        issued_at: 1,
    };
    // A record in the victim's name signed by Mallory (the API refuses to make one).
    assert!(rec.sign(&mallory_key).is_err());
    let forged = SignedEnvelope::new(
        &mallory_key,
        "kwaainet-dht-record".into(),
        b"/kwaainet/node-record".to_vec(),
        serde_json::to_vec(&rec)?,
    )?
    .into_protobuf_encoding();
    let addr = tcp_addr(&node)?;
    let node_tcp: Multiaddr = addr.iter().take(2).collect();
    mallory
        .behaviour_mut()
        .kad
        .add_address(&node.peer_id(), node_tcp);
    let puts = [
        Record::new(node_key(&victim), forged),
        Record::new(RecordKey::new(&"/ipfs/anything"), b"junk".to_vec()),
        Record::new(
            node_key(&mallory_key.public().to_peer_id()),
            vec![0xff; 100],
        ),
    ];
    let mut done = 0;
    for r in puts {
        mallory.behaviour_mut().kad.put_record(r, Quorum::One)?;
    }
    within(30, "mallory's puts complete", async {
        while done < 3 {
            if let SwarmEvent::Behaviour(kwaainet_p2p::behaviour::BehaviourEvent::Kad(
                kwaainet_p2p::libp2p::kad::Event::OutboundQueryProgressed { step, .. },
            )) = mallory.select_next_some().await
                && step.last
            {
                done += 1;
            }
        }
    })
    .await?;
    // The node stored none of them: only its own record is in its store.
    let st = node.state().await?;
    assert_eq!(st.dht_records, 1, "{st:?}");
    assert!(
        within(15, "lookup", node.get_node_record(victim))
            .await??
            .is_none()
    );
    let metrics = node.metrics_text();
    let rejected: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kwaainet_rejected_records_total "))
        .context("no rejected_records metric")?
        .trim()
        .parse()?;
    assert!(rejected >= 3, "rejected {rejected}");
    within(10, "shutdown", node.shutdown()).await?;
    Ok(())
}

/// A node that cannot be reached directly (here forced with `relay_reservations: always`;
/// in the field, when AutoNAT finds it private) reserves a slot on the relay it meets,
/// announces the relayed address, and a peer that only knows that address reaches it
/// through the circuit. A node left on `auto` with no NAT verdict takes no reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_relay_is_reachable_through_its_reservation() -> Result<()> {
    use kwaainet_p2p::RelayReservations;
    use kwaainet_p2p::libp2p::multiaddr::Protocol;

    let mut rcfg = config(true, vec![]);
    rcfg.relay = true;
    let relay = start(rcfg).await?;
    let relay_addr = tcp_addr(&relay)?;

    let mut ncfg = config(true, vec![relay_addr.clone()]);
    ncfg.relay_reservations = RelayReservations::Always;
    let natted = start(ncfg).await?;
    let plain = start(config(true, vec![relay_addr.clone()])).await?;

    let circuit_prefix = format!("/p2p/{}/p2p-circuit", relay.peer_id());
    let relayed = eventually(20, "a relayed address in the node's record", || async {
        let st = natted.state().await.ok()?;
        st.relay_reservations
            .contains(&relay.peer_id())
            .then_some(())?;
        st.announced.into_iter().find(|a| a.relayed).map(|a| a.addr)
    })
    .await?;
    assert!(
        relayed.to_string().contains(&circuit_prefix),
        "relayed address {relayed} is not through the relay"
    );

    // The relayed address reaches the DHT in the node's signed record.
    let rec = eventually(20, "the record with the relayed address", || async {
        let r = plain.get_node_record(natted.peer_id()).await.ok()??;
        r.addrs.iter().any(|e| e.relayed).then_some(r)
    })
    .await?;
    assert_eq!(rec.peer_id, natted.peer_id());

    // A fresh peer dials the circuit address only, and the connection is relayed.
    let visitor = start(config(false, vec![])).await?;
    // (A circuit address names its destination already: `…/p2p-circuit/p2p/<node>`.)
    let target = match relayed.iter().last() {
        Some(Protocol::P2p(id)) if id == natted.peer_id() => relayed.clone(),
        _ => relayed.clone().with(Protocol::P2p(natted.peer_id())),
    };
    within(20, "dial through the relay", visitor.dial(target)).await??;
    let st = visitor.state().await?;
    let via = st
        .connected_peers
        .iter()
        .find(|p| p.peer_id == natted.peer_id())
        .context("visitor not connected to the node")?;
    assert!(
        via.address.to_string().contains("/p2p-circuit"),
        "connected over {} instead of the circuit",
        via.address
    );
    let info = within(
        15,
        "info over the circuit",
        visitor.ask_info(natted.peer_id()),
    )
    .await??;
    assert_eq!(info.peer_id, natted.peer_id());
    assert!(info.addrs.iter().any(|e| e.relayed));

    // `auto` without a NAT verdict (AutoNAT off here): no reservation, nothing relayed.
    let st = plain.state().await?;
    assert!(st.relay_reservations.is_empty());
    assert!(st.announced.iter().all(|a| !a.relayed));
    assert_eq!(st.nat_status, kwaainet_p2p::NatStatus::Unknown);

    for n in [&visitor, &plain, &natted, &relay] {
        within(10, "shutdown", n.shutdown()).await?;
    }
    Ok(())
}

/// `NodeHandle::dial` answers for its own connection only: an address where nothing
/// listens fails at once, one that accepts TCP but never speaks fails at the dial timeout
/// even while another peer connects in meanwhile (an inbound connection once answered a
/// dial without `/p2p/`, and a failed one never resolved), and a live node's address without
/// `/p2p/` connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_answers_for_its_own_connection_and_fails_in_bounded_time() -> Result<()> {
    let mut cfg = config(true, vec![]);
    cfg.dial_timeout_secs = 2;
    let node = start(cfg).await?;

    // Nothing listens: refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{closed}").parse()?;
    let err = within(10, "dial to a closed port", node.dial(addr))
        .await?
        .expect_err("a dial to a closed port succeeded");
    assert!(matches!(err, kwaainet_p2p::Error::Dial { .. }), "{err}");

    // A black hole: accepts, never answers. Meanwhile a real peer dials the node.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hole_addr: Multiaddr =
        format!("/ip4/127.0.0.1/tcp/{}", hole.local_addr()?.port()).parse()?;
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            sockets.push(s);
        }
    });
    let dialing = tokio::spawn({
        let node = node.clone();
        async move { node.dial(hole_addr).await }
    });
    let other = start(config(true, vec![])).await?;
    let node_addr = tcp_addr(&node)?;
    within(10, "an inbound connection", other.dial(node_addr)).await??;
    let started = tokio::time::Instant::now();
    let res = within(10, "the black-hole dial", dialing).await??;
    let err = res.expect_err("the black-hole dial was answered by another connection");
    assert!(err.to_string().contains("within 2 s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A live node's address without /p2p/: connects.
    let plain: Multiaddr = tcp_addr(&other)?
        .iter()
        .filter(|p| !matches!(p, kwaainet_p2p::libp2p::multiaddr::Protocol::P2p(_)))
        .collect();
    within(10, "a dial without /p2p/", node.dial(plain)).await??;

    held.abort();
    node.shutdown().await;
    other.shutdown().await;
    Ok(())
}

/// A client that cannot be a DHT server (what a browser page is) serves a span: it holds a
/// reservation on a relay and asks it to host its signed record (`/kwaainet/host/1.0.0`).
/// A third peer finds the span among the model's servers through the relay's provider
/// registration, with the circuit address, and reaches the client through it. Withdrawing
/// the spans, or disconnecting, ends the hosting; a client sends one record per second at
/// most. (Records that are not the sender's own, or not a client's, or that name direct
/// addresses are refused: `host.rs`'s unit tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_hosts_its_clients_span_records() -> Result<()> {
    use kwaainet_p2p::RelayReservations;
    use kwaainet_p2p::health;

    let mut rcfg = config(true, vec![]);
    rcfg.relay = true;
    let relay = start(rcfg).await?;
    let relay_addr = tcp_addr(&relay)?;

    let mut pcfg = config(false, vec![relay_addr.clone()]);
    pcfg.relay_reservations = RelayReservations::Always;
    pcfg.spans = vec![ServedSpan::new("m@1", 10, 20)];
    // As a page: no listener, so its only address is the relay's circuit (its own record and
    // the one the relay hosts then agree, whichever the DHT returns).
    pcfg.listen = Vec::new();
    let page = start(pcfg).await?;
    let finder = start(config(true, vec![relay_addr.clone()])).await?;

    // Hosted once the reservation gives the client a circuit address.
    eventually(20, "the relay hosts the client", || async {
        page.host_on(relay.peer_id()).await.ok()
    })
    .await?;
    assert_eq!(relay.state().await?.hosted, vec![page.peer_id()]);

    // Its first record, published before the reservation, has no address yet: the span is
    // found once a record with the circuit address has spread.
    let row = eventually(20, "the hosted span among the model's servers", || async {
        health::servers(&finder, "m@1")
            .await
            .into_iter()
            .find(|r| r.peer_id == page.peer_id() && !r.addrs.is_empty())
    })
    .await?;
    assert_eq!((row.start, row.end), (10, 20));
    assert!(row.relayed, "a hosted span is relayed");
    let circuit = row.addrs.first().context("no address")?.clone();
    assert!(circuit.to_string().contains("/p2p-circuit"), "{circuit}");
    within(
        20,
        "dial the client through the relay",
        finder.dial(circuit),
    )
    .await??;
    let info = within(15, "info over the circuit", finder.ask_info(page.peer_id())).await??;
    assert_eq!(info.spans, vec![ServedSpan::new("m@1", 10, 20)]);

    // Withdrawn: the relay stops listing it, and the finder with it.
    let _ = within(20, "spans withdrawn", page.set_spans(Vec::new())).await;
    within(10, "withdraw", page.host_on(relay.peer_id())).await??;
    assert!(relay.state().await?.hosted.is_empty());
    eventually(20, "the withdrawn span gone", || async {
        let rows = health::servers(&finder, "m@1").await;
        rows.iter()
            .all(|r| r.peer_id != page.peer_id())
            .then_some(())
    })
    .await?;

    // Hosted again, then the client goes: hosting ends with its connection.
    let _ = within(
        20,
        "spans again",
        page.set_spans(vec![ServedSpan::new("m@1", 10, 20)]),
    )
    .await;
    eventually(20, "hosted again", || async {
        page.host_on(relay.peer_id()).await.ok()
    })
    .await?;
    // A client may not flood its relay: one record per second (withdrawals excepted).
    let flood = within(10, "a second record at once", page.host_on(relay.peer_id())).await?;
    assert!(
        flood
            .as_ref()
            .is_err_and(|e| e.to_string().contains("one record per")),
        "{flood:?}"
    );
    within(10, "shutdown", page.shutdown()).await?;
    eventually(20, "hosting ends with the connection", || async {
        relay.state().await.ok()?.hosted.is_empty().then_some(())
    })
    .await?;

    for n in [&finder, &relay] {
        within(10, "shutdown", n.shutdown()).await?;
    }
    Ok(())
}
