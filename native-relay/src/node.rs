//! `kwaainet start | identity | peers | status`: the command line and config file of the
//! node. The node itself (swarm, DHT records, HTTP side) lives in `kwaainet-p2p`.
//!
//! Settings come from, highest first: flags, their `KWAAINET_*` environment variables,
//! the TOML file (`--config FILE`), defaults.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kwaainet_p2p::http::{HttpConfig, ModelFile};
use kwaainet_p2p::identity;
use kwaainet_p2p::libp2p::Multiaddr;
use kwaainet_p2p::record::Role;
use kwaainet_p2p::{NodeConfig, NodeState, RelayReservations};
use serde::Deserialize;

/// Default HTTP address: loopback only.
pub(crate) const DEFAULT_HTTP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// Default P2P port (TCP and QUIC; WebSocket and WebRTC-direct on the next one).
const DEFAULT_P2P_PORT: u16 = 4001;

/// Where the identity key is.
#[derive(Debug, clap::Args)]
pub struct IdentityArgs {
    /// Identity key file (default: $KWAAINET_CONFIG_DIR, else $XDG_CONFIG_HOME/kwaainet,
    /// else ~/.config/kwaainet, file identity.key). Created with mode 0600 if missing.
    #[arg(long, env = "KWAAINET_IDENTITY")]
    pub identity: Option<PathBuf>,
}

/// Arguments of `kwaainet start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// TOML config file (see native-relay/README.md for its keys).
    #[arg(long, env = "KWAAINET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Peer to bootstrap from, `/ip4/.../tcp/.../p2p/<peer id>` (repeatable, or comma-separated).
    #[arg(long = "bootstrap", env = "KWAAINET_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<Multiaddr>,
    /// Multiaddr to listen on (repeatable). Default: TCP, QUIC, WebSocket and
    /// WebRTC-direct on --host, ports --port and --port+1.
    #[arg(long = "listen", env = "KWAAINET_LISTEN", value_delimiter = ',')]
    pub listen: Vec<Multiaddr>,
    /// IP for the default listen addresses (default 0.0.0.0).
    #[arg(long, env = "KWAAINET_HOST")]
    pub host: Option<IpAddr>,
    /// Base port for the default listen addresses (0: ephemeral; default 4001).
    #[arg(long, env = "KWAAINET_PORT")]
    pub port: Option<u16>,
    /// Run a circuit relay v2 server.
    #[arg(long, env = "KWAAINET_RELAY")]
    pub relay: bool,
    /// When to reserve a slot on relays and announce the relayed addresses: `auto` (when
    /// AutoNAT finds this node unreachable; the default), `always` or `off`.
    #[arg(long, env = "KWAAINET_RELAY_RESERVATIONS", value_parser = parse_reservations)]
    pub relay_reservations: Option<RelayReservations>,
    /// Full node: serve the DHT (Kademlia server mode) and model spans.
    #[arg(long, env = "KWAAINET_FULL")]
    pub full: bool,
    /// Announce and accept loopback/private addresses (a local network or one machine).
    /// On by default when --host is a loopback address.
    #[arg(long, env = "KWAAINET_LOCAL")]
    pub local: bool,
    /// HTTP address for /api/v1/state, /metrics and the demo site (default 127.0.0.1:8080).
    #[arg(long, env = "KWAAINET_HTTP")]
    pub http: Option<SocketAddr>,
    /// Do not start the HTTP side.
    #[arg(long)]
    pub no_http: bool,
    /// Folder served at / (the demo site).
    #[arg(long, env = "KWAAINET_SITE_DIR")]
    pub site_dir: Option<PathBuf>,
    /// Folder served at /cdn/ (the CDN bundle, dist/cdn).
    #[arg(long, env = "KWAAINET_CDN_DIR")]
    pub cdn_dir: Option<PathBuf>,
    /// GGUF file served at /models/model.gguf (default: the fetched default model, if any).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Coarse region to announce (optional): an ISO 3166-1 country code (DE, US, …), EU
    /// or EEA. Never more precise: requests that allow only some regions route by it.
    #[arg(long, env = "KWAAINET_REGION")]
    pub region: Option<String>,
    /// The share of this node's electricity from its own renewable supply (solar panels,
    /// a plant of its own), in percent, as the operator declares it: it lowers the carbon
    /// intensity the node's footprint uses, and its figures then say `declared`.
    #[arg(long = "onsite-renewable", env = "KWAAINET_ONSITE_RENEWABLE", value_parser = clap::value_parser!(u16).range(0..=100))]
    pub onsite_renewable: Option<u16>,
    /// A public name for this node's contribution record and the leaderboards built from it
    /// (opt-in; without it, the node is known by its did:key only).
    #[arg(long = "public-name", env = "KWAAINET_PUBLIC_NAME")]
    pub public_name: Option<String>,
    /// How often this node republishes its signed contribution record in the DHT, in
    /// seconds (10 to 86400; it is also published 10 s after start).
    #[arg(long = "contribution-every", env = "KWAAINET_CONTRIBUTION_EVERY", default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub contribution_every: u64,
    /// Compliance profiles to enforce, comma-separated: gdpr, ccpa, hipaa (replaces the
    /// config file's `[policy] profiles`). Regions, encryption of held data and retention
    /// follow; see /api/v1/compliance.
    #[arg(long, env = "KWAAINET_POLICY")]
    pub policy: Option<String>,
    /// The WebAuthn RP ID passkeys are made for: the domain the pages run on (default
    /// `localhost`).
    #[arg(long = "webauthn-rp-id", env = "KWAAINET_WEBAUTHN_RP_ID")]
    pub webauthn_rp_id: Option<String>,
    /// Origins whose pages may register and use passkeys (repeatable; default
    /// `http://localhost:<http port>`).
    #[arg(
        long = "webauthn-origin",
        env = "KWAAINET_WEBAUTHN_ORIGIN",
        value_delimiter = ','
    )]
    pub webauthn_origins: Vec<String>,
    /// The folder email verification tokens are written to, one `.eml` file per message,
    /// for a mail relay (or the operator) to send on (default: `outbox/` in the node's
    /// identity folder).
    #[arg(long = "email-outbox", env = "KWAAINET_EMAIL_OUTBOX")]
    pub email_outbox: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub id: IdentityArgs,
    #[command(flatten)]
    pub span: crate::swarm::SpanArgs,
    #[command(flatten)]
    pub api: crate::api::ApiArgs,
}

/// Arguments of `kwaainet peers` and `kwaainet status`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// HTTP address of the running node.
    #[arg(long, env = "KWAAINET_HTTP", default_value_t = DEFAULT_HTTP)]
    pub http: SocketAddr,
    /// Print the raw JSON state.
    #[arg(long)]
    pub json: bool,
}

/// The `[http]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileHttp {
    listen: Option<SocketAddr>,
    enabled: Option<bool>,
    site_dir: Option<PathBuf>,
    cdn_dir: Option<PathBuf>,
    model: Option<PathBuf>,
}

/// The config file: `identity`, `[node]` (every field of the library's `NodeConfig`) and
/// `[http]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    identity: Option<PathBuf>,
    node: NodeConfig,
    http: FileHttp,
    api: crate::api::FileApi,
    policy: kwaainet_compliance::policy::PolicyFile,
}

fn read_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
}

pub(crate) fn identity_path(flag: Option<&Path>, file: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag.or(file) {
        return Ok(p.to_owned());
    }
    Ok(identity::default_config_dir()
        .context("no config directory: pass --identity FILE or set HOME")?
        .join(identity::IDENTITY_FILE))
}

/// `kwaainet identity`: prints the peer id (creating the key on first use) and its file.
pub fn identity(args: &IdentityArgs) -> anyhow::Result<()> {
    let path = identity_path(args.identity.as_deref(), None)?;
    let (key, created) = identity::load_or_create(&path)?;
    let mut out = std::io::stdout().lock();
    let peer = key.public().to_peer_id();
    writeln!(out, "{peer}")?;
    if let Ok(did) = kwaainet_p2p::did::from_peer_id(&peer) {
        writeln!(out, "did: {did}")?;
    }
    writeln!(
        out,
        "key file: {}{}",
        path.display(),
        if created { " (created)" } else { "" }
    )?;
    Ok(())
}

/// The node's effective settings after merging flags, env and file.
struct Settings {
    node: NodeConfig,
    identity: PathBuf,
    http: Option<(SocketAddr, HttpConfig)>,
    /// The OpenAI API on the HTTP side.
    api: Option<crate::api::Settings>,
    /// `--blocks`: the model file and the blocks to serve.
    span: Option<(crate::serving::ModelFile, crate::serving::Blocks)>,
    /// The compliance policy enforced.
    policy: kwaainet_compliance::policy::Policy,
    /// The WebAuthn RP ID and origins (empty: `http://localhost:<http port>`).
    webauthn: (String, Vec<String>),
    email_outbox: Option<std::path::PathBuf>,
    /// Declared on-site renewable supply, per mille.
    onsite_permille: u16,
    /// The contribution record's public name (opt-in).
    public_name: Option<String>,
    /// Ticks (10 s) between two publications of the contribution record.
    contribution_ticks: u64,
}

fn parse_reservations(s: &str) -> Result<RelayReservations, String> {
    match s {
        "auto" => Ok(RelayReservations::Auto),
        "always" => Ok(RelayReservations::Always),
        "off" => Ok(RelayReservations::Off),
        _ => Err(format!("`{s}`: expected auto, always or off")),
    }
}

fn settings(args: &StartArgs) -> anyhow::Result<Settings> {
    let file = match &args.config {
        Some(p) => read_config(p)?,
        None => FileConfig::default(),
    };
    let mut node = file.node;
    let host = args.host.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if !args.listen.is_empty() {
        node.listen = args.listen.clone();
    } else if node.listen.is_empty() || args.host.is_some() || args.port.is_some() {
        node.listen = NodeConfig::default_listen(host, args.port.unwrap_or(DEFAULT_P2P_PORT));
    }
    if !args.bootstrap.is_empty() {
        node.bootstrap = args.bootstrap.clone();
    }
    node.relay |= args.relay;
    if let Some(r) = args.relay_reservations {
        node.relay_reservations = r;
    }
    node.full |= args.full;
    node.allow_local_addrs |= args.local || host.is_loopback();
    if args.region.is_some() {
        node.region = args.region.clone();
    }
    if let Some(r) = &node.region {
        // Canonical (upper case), and only what a residency check can read.
        node.region = Some(kwaainet_p2p::region::Region::parse(r)?.to_string());
    }
    let identity = identity_path(args.id.identity.as_deref(), file.identity.as_deref())?;
    let policy = kwaainet_compliance::policy::Policy::build(&file.policy, args.policy.as_deref())
        .context("the compliance policy")?;
    // The node's own data stays on it: it must sit where the policy allows data.
    policy.check_node(node.region.as_deref())?;

    let span = match &args.span.blocks {
        None => None,
        Some(blocks) => {
            let path = args
                .model
                .clone()
                .or(file.http.model.clone())
                .or_else(crate::fetch::cached_default_model)
                .context("--blocks needs --model (or the fetched default model)")?;
            let sha256 = crate::fetch::model_sha256(&path)?;
            // A span server takes part in the DHT (its record is how clients find it).
            node.full = true;
            Some((crate::serving::ModelFile { path, sha256 }, blocks.clone()))
        }
    };

    let enabled = !args.no_http && file.http.enabled.unwrap_or(true);
    let mut api = None;
    let http = if enabled {
        let addr = args.http.or(file.http.listen).unwrap_or(DEFAULT_HTTP);
        let mut a = crate::api::settings(&args.api, file.api, addr)?;
        // Swarm requests route only where the policy allows data, and where the API allows.
        a.regions = a
            .regions
            .intersect(&policy.allowed_regions)
            .with_context(|| {
                format!(
                    "--api-regions {} has no place in the policy's regions {}",
                    a.regions, policy.allowed_regions
                )
            })?;
        api = Some(a);
        let model_path = args
            .model
            .clone()
            .or(file.http.model)
            .or_else(crate::fetch::cached_default_model);
        let model = match model_path {
            Some(path) => Some(ModelFile {
                sha256: crate::fetch::model_sha256(&path)?,
                path,
            }),
            None => None,
        };
        // The swarm health of the model this node offers is in `/api/v1/state`.
        let watch_models = match &model {
            Some(m) => match (
                crate::swarm::model_id_of(&m.path, &m.sha256),
                crate::swarm::block_count(&m.path),
            ) {
                (Ok(id), Ok(n)) => vec![(id, u32::try_from(n).ok())],
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "no swarm report for the served model");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        Some((
            addr,
            HttpConfig {
                site_dir: args.site_dir.clone().or(file.http.site_dir),
                cdn_dir: args.cdn_dir.clone().or(file.http.cdn_dir),
                model,
                watch_models,
                registries: Vec::new(),
                state_extras: Vec::new(),
            },
        ))
    } else {
        None
    };
    Ok(Settings {
        node,
        identity,
        http,
        api,
        span,
        policy,
        webauthn: (
            args.webauthn_rp_id
                .clone()
                .unwrap_or_else(|| "localhost".into()),
            args.webauthn_origins.clone(),
        ),
        email_outbox: args.email_outbox.clone(),
        onsite_permille: args.onsite_renewable.unwrap_or(0) * 10,
        public_name: args.public_name.clone(),
        contribution_ticks: (args.contribution_every / 10).max(1),
    })
}

/// `kwaainet start`: runs the node until SIGINT or SIGTERM.
pub fn start(args: &StartArgs) -> anyhow::Result<()> {
    let s = settings(args)?;
    let (key, _) = identity::load_or_create(&s.identity)?;
    let webrtc_pem = {
        let cert = s.identity.with_file_name(identity::WEBRTC_CERT_FILE);
        Some(identity::load_or_create_pem(
            &cert,
            kwaainet_p2p::transport::generate_webrtc_pem,
        )?)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(s, key, webrtc_pem, &args.span))
}

/// What stops a node: SIGTERM or SIGINT on Unix (systemd, launchd, Ctrl-C); Ctrl-C, Ctrl-Break,
/// the console closing or the system shutting down on Windows.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(windows)]
    c: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    brk: tokio::signal::windows::CtrlBreak,
    #[cfg(windows)]
    close: tokio::signal::windows::CtrlClose,
    #[cfg(windows)]
    shutdown: tokio::signal::windows::CtrlShutdown,
}

impl StopSignals {
    #[cfg(unix)]
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    #[cfg(windows)]
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::windows;
        Ok(Self {
            c: windows::ctrl_c().context("Ctrl-C handler")?,
            brk: windows::ctrl_break().context("Ctrl-Break handler")?,
            close: windows::ctrl_close().context("console-close handler")?,
            shutdown: windows::ctrl_shutdown().context("shutdown handler")?,
        })
    }

    /// Waits for the first stop signal and names it.
    async fn wait(&mut self) -> &'static str {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
        #[cfg(windows)]
        tokio::select! {
            _ = self.c.recv() => "Ctrl-C",
            _ = self.brk.recv() => "Ctrl-Break",
            _ = self.close.recv() => "console closed",
            _ = self.shutdown.recv() => "system shutdown",
        }
    }
}

async fn run(
    s: Settings,
    key: kwaainet_p2p::libp2p::identity::Keypair,
    webrtc_pem: Option<String>,
    span_args: &crate::swarm::SpanArgs,
) -> anyhow::Result<()> {
    // Install the handlers first: a signal during start-up must not kill us half-way.
    let mut stop = StopSignals::install()?;

    let roles = s.node.clone();
    let data_dir = s.identity.parent().unwrap_or(Path::new(".")).to_owned();
    // The audit log of the node's data operations, signed with its key: opened (and refused
    // if tampered) before the node goes on the network.
    let audit = crate::audit::NodeAudit::open(
        &crate::audit::dir_of(&data_dir, &key.public().to_peer_id()),
        &key,
    )?;
    let key_for_data = key.clone();
    let node = kwaainet_p2p::spawn(s.node, key, webrtc_pem)
        .await
        .context("starting the node")?;
    let data = crate::data::NodeData::open(
        &crate::data::dir_of(&data_dir, &node.peer_id()),
        &node,
        &key_for_data,
        audit.recorder(),
        audit.log(),
        &s.policy,
    )?;
    let footprint = crate::footprint::NodeFootprint::open(
        &crate::footprint::dir_of(&data_dir, &node.peer_id()),
        roles.region.as_deref(),
        s.onsite_permille,
        u32::try_from(s.api.as_ref().map_or(1, |a| a.engine_threads())).unwrap_or(u32::MAX),
        (s.http.as_ref().and_then(|(_, c)| c.model.as_ref()))
            .and_then(|m| std::fs::metadata(&m.path).ok())
            .map_or(0, |m| m.len()),
        &key_for_data,
        s.public_name.clone(),
    )?;
    let service = match &s.span {
        Some((model, blocks)) => Some(
            crate::serving::start(
                &node,
                model,
                span_args,
                blocks.clone(),
                &data_dir,
                Arc::clone(&footprint) as _,
            )
            .await
            .context("serving the span")?,
        ),
        None => None,
    };
    let board = crate::leaderboard::Board::new(node.clone(), Arc::clone(&footprint));
    // Uptime and the span server's work, into the footprint every 10 s; the signed
    // contribution record into the DHT at the first tick and every five minutes.
    let ticker = tokio::spawn({
        let footprint = Arc::clone(&footprint);
        let board = Arc::clone(&board);
        let stats = service.as_ref().map(|s| s.stats_source());
        let every = s.contribution_ticks;
        async move {
            const EVERY: Duration = Duration::from_secs(10);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + EVERY, EVERY);
            for n in 0u64.. {
                tick.tick().await;
                footprint.tick(EVERY, stats.as_ref().map(|s| s()));
                if n % every == 0 {
                    board.publish().await;
                }
            }
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http_task = None;
    let mut http_url = None;
    let mut api = None;
    if let Some((addr, mut cfg)) = s.http {
        let listener = kwaainet_p2p::http::bind(addr)
            .await
            .with_context(|| format!("binding HTTP on {addr}"))?;
        let bound = listener.local_addr()?;
        http_url = Some(format!("http://{bound}/"));
        cfg.registries.push(footprint.registry());
        cfg.state_extras
            .push(kwaainet_p2p::http::StateExtra::new("footprint", {
                let footprint = Arc::clone(&footprint);
                move || footprint.report()
            }));
        if let Some(settings) = &s.api {
            let model = cfg
                .model
                .as_ref()
                .map(|m| (m.path.as_path(), m.sha256.as_str()));
            let node_for_swarm = node.clone();
            let jobs = Some(footprint.hook());
            api = crate::api::build(settings, model, Some(audit.hook()), jobs, |weights, id| {
                Arc::new(crate::swarm::SwarmSessions::new(
                    node_for_swarm,
                    weights,
                    id,
                    settings.regions.clone(),
                    Some(audit.recorder()),
                ))
            })
            .context("starting the OpenAI API")?;
        }
        if let Some((_, registry)) = &api {
            cfg.registries.push(Arc::clone(registry));
        }
        let mut app = kwaainet_p2p::http::router(node.clone(), cfg)
            .merge(audit.router({
                let node_facts = serde_json::json!({
                    "peer_id": node.peer_id().to_string(),
                    "region": roles.region,
                    "api_regions": s.api.as_ref().map(|a| a.regions.to_string()),
                });
                let data = Arc::clone(&data);
                Arc::new(move || {
                    let mut facts = node_facts.clone();
                    facts["policy"] = data.policy_report();
                    facts
                })
            }))
            .merge(crate::consent::router(
                audit.recorder(),
                Some(data.local().clone()),
            ))
            .merge(data.router())
            .merge(footprint.router())
            .merge(crate::leaderboard::router(&board))
            .merge({
                let (rp_id, mut origins) = s.webauthn.clone();
                if origins.is_empty() {
                    origins.push(format!("http://localhost:{}", bound.port()));
                }
                crate::identity::Identities::open(
                    &crate::identity::dir_of(&data_dir, &node.peer_id()),
                    &key_for_data,
                    crate::identity::Settings {
                        rp_id,
                        origins,
                        outbox: s.email_outbox.clone(),
                    },
                    Arc::clone(&data),
                    audit.recorder(),
                )?
                .router()
            });
        app = app.layer(axum::middleware::from_fn(crate::cors::signed_apis));
        if let Some((a, _)) = &api {
            app = app.merge(kwaainet_api::router(Arc::clone(a)));
        }
        let mut rx = stop_rx.clone();
        http_task = Some(tokio::spawn(kwaainet_p2p::http::serve(
            listener,
            app,
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            },
        )));
    }

    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "kwaainet node {}", node.peer_id())?;
        let mut r = Vec::new();
        if roles.full && roles.bootstrap.is_empty() {
            r.push("bootstrap");
        }
        if roles.relay {
            r.push("relay");
        }
        r.push(if roles.full { "full" } else { "client" });
        writeln!(out, "roles: {}", r.join(", "))?;
        writeln!(out, "listening on:")?;
        for a in node.listen_addrs() {
            writeln!(out, "  {a}")?;
        }
        if let Some(url) = &http_url {
            writeln!(out, "http: {url}")?;
        }
        if let Some(service) = &service {
            let a = service.announced();
            writeln!(out, "serving blocks {}..{} of {}", a.start, a.end, a.model)?;
        }
        out.flush()?;
    }

    let why = stop.wait().await;
    tracing::info!("{why}: shutting down");
    ticker.abort();
    if let Some(service) = service {
        service.drain().await;
    }
    if let Some((a, _)) = api {
        // Running requests end with a 503; the engine thread exits within a step.
        let _ = tokio::task::spawn_blocking(move || a.stop()).await;
    }
    footprint.save();
    let _ = stop_tx.send(true);
    data.stop();
    let stopped = tokio::time::timeout(Duration::from_secs(10), async {
        if let Some(t) = http_task {
            match t.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server"),
                Err(e) => tracing::warn!(error = %e, "HTTP task"),
                Ok(Ok(())) => {}
            }
        }
        node.shutdown().await;
    })
    .await;
    // Every decision queued is written (the queue is bounded) before the node reports it stopped.
    let _ = tokio::task::spawn_blocking(move || audit.close()).await;
    if stopped.is_err() {
        bail!("shutdown took longer than 10 s");
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "stopped")?;
    Ok(())
}

/// A GET of `/api/v1/state` on the node's loopback HTTP API (tiny HTTP/1.1 client with
/// timeouts and a size cap), read as the node's own [`NodeState`] type.
fn get_state(addr: SocketAddr) -> anyhow::Result<NodeState> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("is a node running? connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /api/v1/state HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(16 << 20).read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed HTTP reply")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    if !head.starts_with("HTTP/1.1 200") {
        bail!("node answered: {}", head.lines().next().unwrap_or_default());
    }
    serde_json::from_slice(&raw[split + 4..])
        .context("decoding the node state (is the node the same version as this CLI?)")
}

/// `kwaainet peers`: the running node's connected peers.
pub fn peers(args: &QueryArgs) -> anyhow::Result<()> {
    let st = get_state(args.http)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&st.connected_peers)?)?;
        return Ok(());
    }
    writeln!(out, "{} connected peer(s)", st.connected_peers.len())?;
    for p in &st.connected_peers {
        let rtt = p.rtt_ms.map_or("-".to_owned(), |r| format!("{r:.1} ms"));
        writeln!(
            out,
            "{}  {}  rtt {}  {}",
            p.peer_id,
            p.address,
            rtt,
            p.agent.as_deref().unwrap_or("-")
        )?;
    }
    Ok(())
}

/// `kwaainet status`: a summary of the running node.
pub fn status(args: &QueryArgs) -> anyhow::Result<()> {
    let st = get_state(args.http)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&st)?)?;
        return Ok(());
    }
    let roles: Vec<String> = st.roles.iter().map(Role::to_string).collect();
    writeln!(out, "peer id        {}", st.peer_id)?;
    writeln!(out, "version        {}", st.version)?;
    writeln!(out, "roles          {}", roles.join(", "))?;
    writeln!(out, "uptime         {} s", st.uptime_secs)?;
    writeln!(out, "dht mode       {}", st.kad_mode)?;
    writeln!(out, "routing table  {} peers", st.routing_table_peers)?;
    writeln!(out, "dht records    {}", st.dht_records)?;
    writeln!(out, "connected      {} peers", st.connected_peers.len())?;
    writeln!(out, "nat            {}", st.nat_status)?;
    writeln!(out, "listening on")?;
    for a in &st.listen_addrs {
        writeln!(out, "  {a}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: StartArgs,
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("kwaainet-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("node.toml");
        std::fs::write(
            &cfg,
            r#"
identity = "/tmp/some/identity.key"
[node]
full = true
listen = ["/ip4/127.0.0.1/tcp/7000"]
relay_reservations = "off"
[node.relay_limits]
max_circuit_bytes = 123456
[http]
listen = "127.0.0.1:9999"
"#,
        )
        .unwrap();
        let t = T::parse_from([
            "x",
            "--config",
            cfg.to_str().unwrap(),
            "--relay",
            "--model",
            "/nonexistent.gguf",
            "--no-http",
        ]);
        let s = settings(&t.a).unwrap();
        assert!(s.node.full && s.node.relay);
        assert_eq!(s.node.relay_reservations, RelayReservations::Off);
        assert_eq!(s.node.relay_limits.max_circuit_bytes, 123456);
        assert_eq!(
            s.node.listen,
            vec!["/ip4/127.0.0.1/tcp/7000".parse::<Multiaddr>().unwrap()]
        );
        assert_eq!(s.identity, PathBuf::from("/tmp/some/identity.key"));
        assert!(s.http.is_none());
        let t = T::parse_from([
            "x",
            "--config",
            cfg.to_str().unwrap(),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--http",
            "127.0.0.1:0",
            "--model",
            cfg.to_str().unwrap(),
            "--relay-reservations",
            "always",
        ]);
        let s = settings(&t.a).unwrap();
        assert_eq!(s.node.relay_reservations, RelayReservations::Always);
        assert!(
            T::try_parse_from(["x", "--relay-reservations", "sometimes"]).is_err(),
            "an unknown mode is refused"
        );
        assert!(s.node.allow_local_addrs);
        assert!(
            s.node
                .listen
                .iter()
                .all(|a| a.to_string().starts_with("/ip4/127.0.0.1/"))
        );
        assert_eq!(s.http.as_ref().unwrap().0.port(), 0);
        std::fs::write(&cfg, "[node]\nnot_a_key = 1\n").unwrap();
        assert!(settings(&T::parse_from(["x", "--config", cfg.to_str().unwrap()]).a).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The sample config shipped in the release archives (`packaging/kwaainet.toml`) is one
    /// the node accepts, and says what it claims to.
    #[test]
    fn the_packaged_sample_config_is_valid() {
        let file: FileConfig =
            toml::from_str(include_str!("../../packaging/kwaainet.toml")).unwrap();
        assert!(file.node.full && file.node.relay);
        assert_eq!(file.node.limits.max_established, 512);
        assert_eq!(
            file.http.listen,
            Some("127.0.0.1:8080".parse::<SocketAddr>().unwrap())
        );
        assert!(file.identity.is_none());
    }

    #[test]
    fn roles_print_names() {
        assert_eq!(
            serde_json::to_string(&Role::Bootstrap).unwrap(),
            "\"bootstrap\""
        );
    }
}
