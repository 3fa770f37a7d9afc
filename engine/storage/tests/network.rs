//! The network backend between three real nodes on loopback TCP (noise, yamux, Kademlia):
//! the conformance suite with each party on its own node, a blob read by a node that never
//! held it and surviving its owner stopping, and hostile requests. Every wait is bounded.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{AsyncReadExt, AsyncWriteExt};
use kwaainet_p2p::libp2p::identity::Keypair;
use kwaainet_p2p::libp2p::{Multiaddr, PeerId};
use kwaainet_p2p::{NodeConfig, NodeHandle};
use kwaainet_storage::conformance::{Party, run};
use kwaainet_storage::net::{self, DeleteRequest, NetConfig, NetworkStore, PROTOCOL};
use kwaainet_storage::{Acl, Cid, Error, Limits, MemoryStore, StorageProvider};

const LIMITS: Limits = Limits {
    max_blob: 64 << 10,
    max_total: 16 << 20,
};

struct Peer {
    node: NodeHandle,
    key: Keypair,
    local: Arc<MemoryStore>,
    store: NetworkStore,
    serving: tokio::task::JoinHandle<()>,
}

impl Peer {
    fn did(&self) -> String {
        self.store.did().to_owned()
    }

    async fn stop(&self) {
        self.serving.abort();
        self.node.shutdown().await;
    }
}

async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .with_context(|| format!("timed out after {secs} s: {what}"))
}

fn tcp_addr(node: &NodeHandle) -> Result<Multiaddr> {
    node.listen_addrs()
        .iter()
        .find(|a| a.to_string().contains("/tcp/") && !a.to_string().contains("/ws"))
        .cloned()
        .context("node has no TCP address")
}

async fn peer(bootstrap: Vec<Multiaddr>, replicas: usize) -> Result<Peer> {
    let config = NetConfig {
        replicas,
        timeout: Duration::from_secs(5),
        max_streams: 8,
        ..NetConfig::default()
    };
    peer_with(bootstrap, config, None).await
}

async fn peer_with(
    bootstrap: Vec<Multiaddr>,
    config: NetConfig,
    region: Option<&str>,
) -> Result<Peer> {
    let net = config;
    let node_config = NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        bootstrap,
        full: true,
        allow_local_addrs: true,
        autonat: false,
        region: region.map(str::to_owned),
        ..NodeConfig::default()
    };
    let key = Keypair::generate_ed25519();
    let node = kwaainet_p2p::spawn(node_config, key.clone(), None).await?;
    let local = Arc::new(MemoryStore::with_limits(LIMITS));
    let config = net;
    let serving = tokio::spawn({
        let (node, key, local) = (
            node.clone(),
            key.clone(),
            local.clone() as Arc<dyn StorageProvider>,
        );
        let config = config.clone();
        async move {
            if let Err(e) = net::serve(node, key, local, config).await {
                panic!("serve: {e}");
            }
        }
    });
    let store = NetworkStore::new(node.clone(), key.clone(), local.clone(), config)?;
    Ok(Peer {
        node,
        key,
        local,
        store,
        serving,
    })
}

/// Three nodes bootstrapped off the first, each knowing the two others.
async fn three(replicas: usize) -> Result<[Peer; 3]> {
    let a = peer(vec![], replicas).await?;
    let boot = tcp_addr(&a.node)?;
    let b = peer(vec![boot.clone()], replicas).await?;
    let c = peer(vec![boot], replicas).await?;
    // C may have bootstrapped before the boot node knew B: connect them directly rather
    // than wait for a routing-table refresh (minutes).
    within(20, "c dials b", c.node.dial(tcp_addr(&b.node)?)).await??;
    within(60, "every routing table holds the two other nodes", async {
        loop {
            let mut full = true;
            for p in [&a, &b, &c] {
                full &= p
                    .node
                    .state()
                    .await
                    .map(|s| s.routing_table_peers >= 2)
                    .unwrap_or(false);
            }
            if full {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await?;
    Ok([a, b, c])
}

fn party(p: &Peer) -> Party<'_> {
    Party {
        did: p.did(),
        store: &p.store,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_backend_conforms_with_each_party_on_its_own_node() -> Result<()> {
    let [a, b, c] = three(2).await?;
    let locals = [a.local.clone(), b.local.clone(), c.local.clone()];
    let tamper = move |cid: Cid| -> std::pin::Pin<Box<dyn Future<Output = ()>>> {
        for l in &locals {
            l.corrupt(&cid, b"evil".to_vec());
        }
        Box::pin(async {})
    };
    within(
        120,
        "the conformance suite",
        run(party(&a), party(&b), party(&c), Some(&tamper)),
    )
    .await?
    .map_err(anyhow::Error::msg)?;
    for p in [&a, &b, &c] {
        p.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_is_read_by_a_node_that_never_held_it_and_outlives_its_owner() -> Result<()> {
    let [a, b, c] = three(1).await?;
    let data = b"a sealed blob, as the vault would store it".to_vec();
    let acl = Acl::private(a.did())
        .with_reader(b.did())
        .with_reader(c.did());
    let cid = within(30, "store", a.store.store(data.clone(), &acl)).await??;

    // One replica: exactly one of B and C holds it.
    let owner = a.did();
    let (bh, ch) = (
        b.local.list(&owner).await?.contains(&cid),
        c.local.list(&owner).await?.contains(&cid),
    );
    assert!(bh ^ ch, "one replica: b holds {bh}, c holds {ch}");
    let (holder, other) = if bh { (&b, &c) } else { (&c, &b) };

    // The other node reads it over the network (it holds nothing).
    assert_eq!(
        within(30, "remote read", other.store.retrieve(&cid, &other.did())).await??,
        data
    );
    assert!(other.local.list(&a.did()).await?.is_empty());

    // A tampered replica is skipped: the owner's copy answers.
    assert!(holder.local.corrupt(&cid, b"forged bytes".to_vec()));
    assert_eq!(
        within(
            30,
            "read past a tampered replica",
            other.store.retrieve(&cid, &other.did())
        )
        .await??,
        data
    );
    // The replica is repaired by storing again (the holder takes the good bytes back).
    holder.local.delete(&cid, &a.did()).await?;
    within(30, "store again", a.store.store(data.clone(), &acl)).await??;

    // The owner stops: the replica still answers.
    a.stop().await;
    let read = within(
        30,
        "read with the owner gone",
        other.store.retrieve(&cid, &other.did()),
    )
    .await??;
    assert_eq!(read, data);
    for p in [&b, &c] {
        p.stop().await;
    }
    Ok(())
}

/// Sends one raw request (`header` JSON, then `body`) and returns the answer's header.
async fn raw(
    from: &Peer,
    to: PeerId,
    header: serde_json::Value,
    body: &[u8],
    lie_len: Option<u32>,
) -> Result<serde_json::Value> {
    let mut control = from.node.stream_control();
    let mut s = within(10, "open", control.open_stream(to, PROTOCOL)).await??;
    let head = serde_json::to_vec(&header)?;
    s.write_all(&(head.len() as u32).to_be_bytes()).await?;
    s.write_all(&head).await?;
    s.write_all(&lie_len.unwrap_or(body.len() as u32).to_be_bytes())
        .await?;
    s.write_all(body).await?;
    s.flush().await?;
    let mut len = [0u8; 4];
    within(10, "answer", s.read_exact(&mut len)).await??;
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut answer).await?;
    Ok(serde_json::from_slice(&answer)?)
}

fn kind(answer: &serde_json::Value) -> &str {
    answer["kind"]
        .as_str()
        .unwrap_or(answer["op"].as_str().unwrap_or("?"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_and_lose_nothing() -> Result<()> {
    let [a, b, c] = three(2).await?;
    let data = b"precious".to_vec();
    let cid = within(
        30,
        "store",
        a.store.store(data.clone(), &Acl::private(a.did())),
    )
    .await??;
    let b_peer = b.node.peer_id();

    // C stores a replica in A's name: refused.
    let put = serde_json::json!({"op": "put", "acl": Acl::private(a.did())});
    assert_eq!(kind(&raw(&c, b_peer, put, b"squat", None).await?), "denied");
    // C reads A's private blob: refused.
    let get = serde_json::json!({"op": "get", "cid": cid});
    assert_eq!(kind(&raw(&c, b_peer, get, &[], None).await?), "denied");
    // A deletion request signed by C in A's name, and one of A's that is too old.
    let mut forged = DeleteRequest::sign(&c.key, cid, now_ms())?;
    forged.owner = a.did();
    let del = serde_json::json!({"op": "delete", "request": forged});
    assert_eq!(kind(&raw(&c, b_peer, del, &[], None).await?), "signature");
    let stale = DeleteRequest::sign(&a.key, cid, now_ms() - 3_600_000)?;
    let del = serde_json::json!({"op": "delete", "request": stale});
    assert_eq!(kind(&raw(&c, b_peer, del, &[], None).await?), "signature");
    // C's own deletion request for A's blob: a valid signature, not the owner.
    let mine = DeleteRequest::sign(&c.key, cid, now_ms())?;
    let del = serde_json::json!({"op": "delete", "request": mine});
    assert_eq!(kind(&raw(&c, b_peer, del, &[], None).await?), "denied");
    // A body announced over the limit (never sent), a malformed header, a bad CID.
    let put = serde_json::json!({"op": "put", "acl": Acl::private(c.did())});
    assert_eq!(
        kind(&raw(&c, b_peer, put, &[], Some(u32::MAX)).await?),
        "too_large"
    );
    assert_eq!(
        kind(&raw(&c, b_peer, serde_json::json!({"op": "explode"}), &[], None).await?),
        "invalid"
    );
    let get = serde_json::json!({"op": "get", "cid": "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"});
    assert_eq!(kind(&raw(&c, b_peer, get, &[], None).await?), "invalid");

    // Nothing was lost: B still holds A's blob, and A reads it.
    assert_eq!(b.local.retrieve(&cid, &a.did()).await?, data);
    assert_eq!(a.store.retrieve(&cid, &a.did()).await?, data);
    // A node cannot act in another identity's name.
    let as_other = b.store.retrieve(&cid, &a.did()).await;
    assert!(
        matches!(as_other, Err(Error::Denied { .. })),
        "{as_other:?}"
    );

    // A's real deletion: every holder answers with a receipt signed by its own key.
    let deleted = within(30, "delete", a.store.delete(&cid, &a.did())).await??;
    let mut holders: Vec<String> = deleted.receipts.iter().map(|r| r.holder.clone()).collect();
    holders.sort();
    let mut expected = vec![b.did(), c.did()];
    expected.sort();
    assert_eq!(holders, expected, "unconfirmed: {:?}", deleted.unconfirmed);
    for r in &deleted.receipts {
        net::verify_receipt(r)?;
        assert_eq!(r.cid, cid);
    }
    // A receipt with its time changed no longer verifies.
    let mut bent = deleted.receipts[0].clone();
    bent.at_ms += 1;
    assert!(net::verify_receipt(&bent).is_err());
    for p in [&a, &b, &c] {
        assert!(p.local.list(&a.did()).await?.is_empty());
    }
    assert!(matches!(
        c.store.retrieve(&cid, &c.did()).await,
        Err(Error::NotFound(_))
    ));

    // A deletion request C captured (any peer can carry one) is carried out once; replayed
    // within its window, after A stored the same bytes again, it is refused.
    let captured = DeleteRequest::sign(&a.key, cid, now_ms())?;
    let del = serde_json::json!({"op": "delete", "request": captured});
    b.local.store(data.clone(), &Acl::private(a.did())).await?;
    assert_eq!(
        kind(&raw(&c, b_peer, del.clone(), &[], None).await?),
        "deleted"
    );
    b.local.store(data.clone(), &Acl::private(a.did())).await?;
    assert_eq!(kind(&raw(&c, b_peer, del, &[], None).await?), "denied");
    assert_eq!(
        b.local.retrieve(&cid, &a.did()).await?,
        data,
        "the replay deleted nothing"
    );
    for p in [&a, &b, &c] {
        p.stop().await;
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_go_only_to_allowed_regions_and_policy_holders_take_only_ciphertext() -> Result<()>
{
    let eu_only = NetConfig {
        replicas: 2,
        timeout: Duration::from_secs(5),
        placement: kwaainet_p2p::region::AllowedRegions::parse("EU")?,
        ..NetConfig::default()
    };
    let strict = NetConfig {
        sealed_only: true,
        max_blobs_per_peer: 1,
        ..NetConfig::default()
    };
    let a = peer_with(vec![], eu_only, Some("FR")).await?;
    let boot = tcp_addr(&a.node)?;
    let b = peer_with(vec![boot.clone()], strict.clone(), Some("DE")).await?;
    let c = peer_with(vec![boot], strict, Some("US")).await?;
    within(30, "a knows both peers' regions", async {
        loop {
            let de = a
                .node
                .get_node_record(b.node.peer_id())
                .await
                .ok()
                .flatten()
                .and_then(|r| r.region);
            let us = a
                .node
                .get_node_record(c.node.peer_id())
                .await
                .ok()
                .flatten()
                .and_then(|r| r.region);
            if de.as_deref() == Some("DE") && us.as_deref() == Some("US") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await?;
    // Plaintext: the DE holder refuses it (its policy requires encryption), the US node is
    // never asked; the owner keeps its copy and is told.
    let plain = a
        .store
        .store(b"not sealed".to_vec(), &Acl::private(a.did()))
        .await;
    assert!(
        matches!(plain, Err(Error::Network(ref m)) if m.contains("sealed")),
        "{plain:?}"
    );
    // A sealed blob: one replica, in DE only.
    let sealed = [kwaainet_storage::SEALED_MAGIC.as_slice(), b"ciphertext"].concat();
    let cid = within(
        30,
        "store sealed",
        a.store.store(sealed.clone(), &Acl::private(a.did())),
    )
    .await??;
    assert_eq!(b.local.list(&a.did()).await?, vec![cid]);
    assert!(
        c.local.list(&a.did()).await?.is_empty(),
        "a US node got an EU-only replica"
    );
    assert_eq!(
        a.local.list(&a.did()).await?.len(),
        2,
        "the owner keeps both"
    );
    // The DE holder keeps one blob per peer here: a second is refused, the first stays.
    let second = [
        kwaainet_storage::SEALED_MAGIC.as_slice(),
        b"more ciphertext",
    ]
    .concat();
    let more = a.store.store(second, &Acl::private(a.did())).await;
    assert!(
        matches!(more, Err(Error::Network(ref m)) if m.contains("blobs held for this peer")),
        "{more:?}"
    );
    assert_eq!(b.local.list(&a.did()).await?, vec![cid]);
    for p in [&a, &b, &c] {
        p.stop().await;
    }
    Ok(())
}
