//! `kwaainet bench --swarm`: generation through span servers that are real KwaaiNet nodes on
//! loopback (their own libp2p stacks, a bootstrap node, the DHT; servers find the next server
//! of a route by its record to push to it), against the whole model in this process.
//!
//! For 1, 2 and 3 hops, with server-to-server push and without, per codec: prefill and decode
//! tokens/s and hidden-state bytes per decoded token; then the time a decoding step takes
//! when the server in use was killed just before it (detection, re-planning, history replay).
//! `--latency-ms D` adds D ms one way to every frame (links of the client and the servers'
//! pushes), to ask what the chain costs over a wide-area network.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kwaainet_core::codec::Codec;
use kwaainet_core::generate::{CpuSession, Session};
use kwaainet_core::{Llama, LoadSpec};
use kwaainet_p2p::libp2p::identity::Keypair;
use kwaainet_p2p::libp2p::{Multiaddr, PeerId};
use kwaainet_p2p::{NodeConfig, NodeHandle};
use kwaainet_swarm::link::Delayed;
use kwaainet_swarm::net::{NetConfig, NetConnector};
use kwaainet_swarm::{ClientConfig, CodecChoice, Connector, ServerEntry, SwarmSession};

use crate::bench::{BenchArgs, argmax, median};

/// A span server node of the bench.
struct Server {
    node: NodeHandle,
    entry: ServerEntry,
    addr: Multiaddr,
    task: tokio::task::JoinHandle<()>,
}

fn loopback() -> anyhow::Result<Vec<Multiaddr>> {
    Ok(vec!["/ip4/127.0.0.1/tcp/0".parse()?])
}

async fn spawn(config: NodeConfig) -> anyhow::Result<NodeHandle> {
    let key = Keypair::generate_ed25519();
    Ok(kwaainet_p2p::spawn(config, key, None).await?)
}

fn tcp_addr(node: &NodeHandle) -> anyhow::Result<Multiaddr> {
    node.listen_addrs()
        .iter()
        .find(|a| a.to_string().contains("/tcp/"))
        .cloned()
        .context("no TCP listen address")
}

/// Starts a node serving `blocks` of the model, bootstrapped from `boot`.
async fn server(
    path: &std::path::Path,
    sha: &str,
    blocks: Range<usize>,
    boot: &Multiaddr,
    latency: Duration,
    data_dir: &std::path::Path,
) -> anyhow::Result<Server> {
    let args = crate::swarm::SpanArgs {
        blocks: Some(crate::swarm::Blocks::Pinned(blocks.clone())),
        num_blocks: None,
        rebalance_secs: 0,
        balance_quality: 0.75,
        max_sessions: 16,
        cache_tokens: 8192,
        max_length: 2048,
    };
    let (path, sha) = (path.to_owned(), sha.to_owned());
    let dir = data_dir.to_owned();
    let span = tokio::task::spawn_blocking(move || {
        crate::swarm::load_span(&path, &sha, &args, blocks, &dir)
    })
    .await??;
    let node = spawn(NodeConfig {
        listen: loopback()?,
        bootstrap: vec![boot.clone()],
        allow_local_addrs: true,
        autonat: false,
        full: true,
        spans: vec![span.announced.clone()],
        ..NodeConfig::default()
    })
    .await?;
    let slot = Arc::new(kwaainet_swarm::net::ServerSlot::new(Arc::clone(
        &span.server,
    )));
    let task = crate::swarm::serve(&node, slot);
    if !latency.is_zero() {
        let pusher = crate::swarm::pusher(&node);
        span.server
            .set_pusher(Arc::new(Delayed::new(pusher, latency)));
    }
    let mut entry = ServerEntry::new(
        node.peer_id().to_string(),
        span.announced.start as usize..span.announced.end as usize,
    );
    entry.throughput = span.announced.throughput.map(f64::from);
    Ok(Server {
        addr: tcp_addr(&node)?,
        node,
        entry,
        task,
    })
}

/// (prefill tok/s, decode tok/s) of one generation on `s`.
fn measure(s: &mut dyn Session, prompt: &[u32], tokens: usize) -> anyhow::Result<(f64, f64)> {
    let t = Instant::now();
    let mut logits = s.forward(prompt)?;
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..tokens {
        let next = argmax(&logits);
        logits = s.forward(&[next])?;
    }
    Ok((prefill, tokens as f64 / t.elapsed().as_secs_f64()))
}

/// `kwaainet bench --swarm`.
#[allow(clippy::print_stdout)]
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.runs > 0 && args.prompt_tokens > 0 && args.gen_tokens > 0,
        "runs and token counts must be > 0"
    );
    let path = crate::model::resolve(args.model.as_deref())?;
    let sha = crate::fetch::model_sha256(&path)?;
    let whole = crate::model::load_spec(&path, |c| {
        Ok(LoadSpec {
            blocks: 0..c.n_layers,
            embed: true,
            head: true,
        })
    })?;
    let local = crate::model::load_spec(&path, |_| {
        Ok(LoadSpec {
            blocks: 0..0,
            embed: true,
            head: true,
        })
    })?;
    let n_layers = whole.model.config().n_layers;
    let prompt: Vec<u32> = (0..args.prompt_tokens)
        .map(|i| 1 + (i as u32 * 37) % 4000)
        .collect();
    let codecs: Vec<Codec> = args
        .codecs
        .iter()
        .map(|n| Codec::from_name(n).with_context(|| format!("unknown codec {n}")))
        .collect::<anyhow::Result<_>>()?;
    let latency = Duration::from_millis(args.latency_ms);
    let id = crate::swarm::model_id_of(&path, &sha)?;
    let data_dir = std::env::temp_dir().join(format!("kwaainet-bench-{}", std::process::id()));

    println!(
        "swarm bench: {} ({n_layers} blocks), prompt {} tokens, {} decoded, median of {} runs, {} ms added one way per frame",
        path.display(),
        prompt.len(),
        args.gen_tokens,
        args.runs,
        args.latency_ms
    );
    let (mut pre, mut dec) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let mut s = CpuSession::new(Arc::clone(&whole.model), prompt.len() + args.gen_tokens + 1)?;
        let (p, d) = measure(&mut s, &prompt, args.gen_tokens)?;
        pre.push(p);
        dec.push(d);
    }
    let (local_pre, local_dec) = (median(pre), median(dec));
    println!(
        "{:<28} prefill {local_pre:7.1} tok/s  decode {local_dec:6.1} tok/s",
        "local (whole model)"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let boot = spawn(NodeConfig {
            listen: loopback()?,
            allow_local_addrs: true,
            autonat: false,
            full: true,
            ..NodeConfig::default()
        })
        .await?;
        let boot_addr = tcp_addr(&boot)?.with_p2p(boot.peer_id()).map_err(|_| anyhow::anyhow!("address"))?;
        let client = spawn(NodeConfig {
            listen: loopback()?,
            bootstrap: vec![boot_addr.clone()],
            allow_local_addrs: true,
            autonat: false,
            ..NodeConfig::default()
        })
        .await?;
        let net: Arc<dyn Connector> = Arc::new(NetConnector::new(
            client.stream_control(),
            tokio::runtime::Handle::current(),
            NetConfig::default(),
        ));
        let connector: Arc<dyn Connector> = if latency.is_zero() {
            net
        } else {
            Arc::new(Delayed::new(net, latency))
        };
        let mut all = Vec::new();
        for hops in args.hops.iter().copied().filter(|&h| h > 0 && h <= n_layers) {
            let cut = |k: usize| k * n_layers / hops;
            let mut servers = Vec::new();
            for h in 0..hops {
                let s = server(&path, &sha, cut(h)..cut(h + 1), &boot_addr, latency, &data_dir).await?;
                client.dial(s.addr.clone().with_p2p(s.node.peer_id()).map_err(|_| anyhow::anyhow!("address"))?).await?;
                servers.push(s);
            }
            // Servers meet through the DHT (records), as they do in a real swarm.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let entries: Vec<ServerEntry> = servers.iter().map(|s| s.entry.clone()).collect();
            for &codec in &codecs {
                for push in [false, true] {
                    let config = ClientConfig {
                        codec: CodecChoice::Fixed(codec),
                        max_length: prompt.len() + args.gen_tokens + 8,
                        push,
                        ..ClientConfig::new(id.clone())
                    };
                    let (local, entries, connector, prompt) = (Arc::clone(&local.model), entries.clone(), Arc::clone(&connector), prompt.clone());
                    let (runs, tokens) = (args.runs, args.gen_tokens);
                    let (p, d) = tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, f64)> {
                        // One short warm-up (streams opened, pushes resolved).
                        let mut s = SwarmSession::new(Arc::clone(&local), entries.clone(), Arc::clone(&connector), config.clone(), "warm-up");
                        measure(&mut s, &prompt[..prompt.len().min(8)], 2)?;
                        drop(s);
                        let (mut pre, mut dec) = (Vec::new(), Vec::new());
                        for r in 0..runs {
                            let mut s = SwarmSession::new(Arc::clone(&local), entries.clone(), Arc::clone(&connector), config.clone(), format!("run-{r}"));
                            let (p, d) = measure(&mut s, &prompt, tokens)?;
                            let st = s.stats().clone();
                            anyhow::ensure!(st.failovers == 0, "a failover during the bench: {st:?}");
                            anyhow::ensure!(!push || hops == 1 || st.pushed > 0, "nothing was pushed: {st:?}");
                            pre.push(p);
                            dec.push(d);
                        }
                        Ok((median(pre), median(dec)))
                    })
                    .await??;
                    // Hidden-state bytes of one decoded token over the whole chain: pushed,
                    // one transfer per link of the chain (client, servers, client); not,
                    // there and back at every hop.
                    let transfers = if push { hops + 1 } else { 2 * hops };
                    let bytes = codec.encoded_len(whole.model.config().dim) * transfers;
                    let label = format!("{hops} hop(s), {codec}, {}", if push { "push" } else { "no push" });
                    println!(
                        "{label:<28} prefill {p:7.1} tok/s  decode {d:6.1} tok/s  ({:.2}x local)  {bytes} B/token on the wire",
                        d / local_dec
                    );
                    all.push((hops, codec, push, d));
                }
            }
            for s in &servers {
                s.task.abort();
                s.node.shutdown().await;
            }
        }
        recovery(&path, &sha, &boot_addr, &client, &connector, &local.model, &id, &prompt, args, &data_dir).await?;
        client.shutdown().await;
        boot.shutdown().await;
        anyhow::Ok(())
    });
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

/// Three hops with the middle span served twice: the server in use is killed before a
/// decoding step; prints that step's time against the median of the others.
#[allow(clippy::print_stdout, clippy::too_many_arguments)]
async fn recovery(
    path: &std::path::Path,
    sha: &str,
    boot: &Multiaddr,
    client: &NodeHandle,
    connector: &Arc<dyn Connector>,
    local: &Arc<Llama>,
    id: &str,
    prompt: &[u32],
    args: &BenchArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let n = local.config().n_layers;
    let latency = Duration::from_millis(args.latency_ms);
    let spans = [0..n / 3, n / 3..2 * n / 3, n / 3..2 * n / 3, 2 * n / 3..n];
    let mut servers = Vec::new();
    for blocks in spans {
        let s = server(path, sha, blocks, boot, latency, data_dir).await?;
        client
            .dial(
                s.addr
                    .clone()
                    .with_p2p(s.node.peer_id())
                    .map_err(|_| anyhow::anyhow!("address"))?,
            )
            .await?;
        servers.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let entries: Vec<ServerEntry> = servers.iter().map(|s| s.entry.clone()).collect();
    let victim: PeerId = servers[1].node.peer_id();
    let config = ClientConfig {
        codec: CodecChoice::Fixed(Codec::F16),
        max_length: prompt.len() + args.gen_tokens + 8,
        ..ClientConfig::new(id)
    };
    let (local, connector, prompt, tokens) = (
        Arc::clone(local),
        Arc::clone(connector),
        prompt.to_vec(),
        args.gen_tokens.max(4),
    );
    let handle = tokio::runtime::Handle::current();
    let victim_node = servers[1].node.clone();
    let victim_task = servers[1].task.abort_handle();
    let (times, killed_at, st) = tokio::task::spawn_blocking(
        move || -> anyhow::Result<(Vec<f64>, usize, kwaainet_swarm::SwarmStats)> {
            let mut s = SwarmSession::new(local, entries, connector, config, "recovery");
            let mut logits = s.forward_tokens(&prompt)?;
            anyhow::ensure!(
                s.route()[1].0 == victim.to_string(),
                "the first middle server is not in use"
            );
            let kill = tokens / 2;
            let mut times = Vec::new();
            for i in 0..tokens {
                if i == kill {
                    // The peer goes away: its serving stops and its connections close.
                    victim_task.abort();
                    handle.block_on(victim_node.shutdown());
                }
                let t = Instant::now();
                logits = s.forward_tokens(&[argmax(&logits)])?;
                times.push(t.elapsed().as_secs_f64());
            }
            Ok((times, kill, s.stats().clone()))
        },
    )
    .await??;
    let killed = times[killed_at];
    let others = median(
        times
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != killed_at)
            .map(|(_, t)| *t)
            .collect(),
    );
    println!(
        "recovery: the step after a kill took {:.0} ms (others {:.0} ms): {} failover(s), {} replay(s) of {} positions",
        killed * 1e3,
        others * 1e3,
        st.failovers,
        st.replays,
        args.prompt_tokens + killed_at
    );
    for s in &servers {
        s.task.abort();
        s.node.shutdown().await;
    }
    Ok(())
}
