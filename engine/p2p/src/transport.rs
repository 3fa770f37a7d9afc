//! Transports and the swarm builder (native).
//!
//! Network: TCP and WebSocket (noise + yamux), QUIC, WebRTC-direct (feature `webrtc`),
//! DNS, and the circuit relay v2 client. Memory: `/memory/N` with noise + yamux, for
//! in-process swarms (tests, the scale simulation).

use std::time::Duration;

use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{Swarm, SwarmBuilder, Transport, noise, tcp, yamux};
use prometheus_client::registry::Registry;

use crate::behaviour::Behaviour;
use crate::config::NodeConfig;
use crate::error::{Error, Result};

/// The in-memory transport's connection upgrade (noise, yamux) gives up after this long.
const MEMORY_UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);

/// Which transports a node gets.
#[derive(Debug, Clone)]
pub enum TransportKind {
    /// TCP, QUIC, WebSocket and WebRTC-direct; `webrtc_pem` keeps the WebRTC certificate
    /// (and so the `/certhash` browsers dial) stable across restarts.
    Network {
        /// PEM of the WebRTC certificate (`None`: a fresh one).
        webrtc_pem: Option<String>,
    },
    /// The in-process memory transport only.
    Memory,
}

fn yamux_config() -> yamux::Config {
    // yamux's defaults (256 KiB windows growing to 16 MiB per connection) suit tensors.
    yamux::Config::default()
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn err(e: impl std::fmt::Display) -> Error {
    Error::Transport(e.to_string())
}

/// Builds a swarm for `key` with `config`'s behaviour; transport byte counters are
/// registered in `registry`.
pub async fn build_swarm(
    key: Keypair,
    config: &NodeConfig,
    kind: TransportKind,
    registry: &mut Registry,
) -> Result<Swarm<Behaviour>> {
    let idle = Duration::from_secs(config.idle_timeout_secs.max(1));
    match kind {
        TransportKind::Memory => {
            let swarm = SwarmBuilder::with_existing_identity(key)
                .with_tokio()
                .with_other_transport(|key| -> std::result::Result<_, BoxError> {
                    Ok(MemoryTransport::default()
                        .upgrade(Version::V1)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux_config())
                        .timeout(MEMORY_UPGRADE_TIMEOUT))
                })
                .map_err(err)?
                .with_relay_client(noise::Config::new, yamux_config)
                .map_err(err)?
                .with_bandwidth_metrics(registry)
                .with_behaviour(|key, relay| Behaviour::new(key, relay, config))
                .map_err(err)?
                .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
                .build();
            Ok(swarm)
        }
        TransportKind::Network { webrtc_pem } => {
            #[cfg(not(feature = "webrtc"))]
            let _ = webrtc_pem;
            let builder = SwarmBuilder::with_existing_identity(key)
                .with_tokio()
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux_config,
                )
                .map_err(err)?
                .with_quic();
            #[cfg(feature = "webrtc")]
            let builder = {
                use libp2p::core::muxing::StreamMuxerBox;
                use libp2p_webrtc::tokio as webrtc;

                use crate::webrtc_chunks::ChunkedMuxer;
                use crate::webrtc_compat::WebRtcTransport;
                let cert = match webrtc_pem {
                    Some(pem) => webrtc::Certificate::from_pem(&pem).map_err(err)?,
                    None => webrtc::Certificate::generate(&mut rand::rng()).map_err(err)?,
                };
                builder
                    .with_other_transport(|key| -> std::result::Result<_, BoxError> {
                        Ok(WebRtcTransport::new(key, cert)?.map(|(peer, conn), _| {
                            (peer, StreamMuxerBox::new(ChunkedMuxer::new(conn)))
                        }))
                    })
                    .map_err(err)?
            };
            let swarm = builder
                .with_dns()
                .map_err(err)?
                .with_websocket(noise::Config::new, yamux_config)
                .await
                .map_err(err)?
                .with_relay_client(noise::Config::new, yamux_config)
                .map_err(err)?
                .with_bandwidth_metrics(registry)
                .with_behaviour(|key, relay| Behaviour::new(key, relay, config))
                .map_err(err)?
                .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
                .build();
            Ok(swarm)
        }
    }
}

/// A fresh WebRTC certificate as PEM, to store beside the identity key.
#[cfg(feature = "webrtc")]
pub fn generate_webrtc_pem() -> Result<String> {
    let cert = libp2p_webrtc::tokio::Certificate::generate(&mut rand::rng()).map_err(err)?;
    Ok(cert.serialize_pem())
}
