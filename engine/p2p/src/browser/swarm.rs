//! The page-side swarm: WebRTC-direct and WebSocket transports, each dial bounded, the
//! relay client, and a KwaaiNet node's protocols (Kademlia in client mode) plus
//! `/kwaainet/msg/1.0.0`.

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Swarm, SwarmBuilder, Transport, noise, webrtc_websys, websocket_websys, yamux};

use super::MAX_IN_FLIGHT;
use crate::behaviour::Behaviour;
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::msg;
use crate::webrtc_chunks::ChunkedMuxer;

/// The swarm's connection timeout is the dial timeout plus this (its own default, 10 s,
/// would cut a longer per-address dial timeout).
const CONNECTION_TIMEOUT_SLACK: Duration = Duration::from_secs(5);

/// The page-side node's behaviour: a KwaaiNet node's protocols plus `/kwaainet/msg/1.0.0`.
#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)] // the derive's generated types have no Debug
pub struct BrowserBehaviour {
    pub(super) node: Behaviour,
    pub(super) msg: request_response::Behaviour<msg::Codec>,
}

/// Builds a browser swarm for `key`: WebRTC-direct and WebSocket (noise + yamux), each
/// outgoing dial bounded by `dial_timeout`, the relay client on top, Kademlia in client mode.
pub fn build_swarm(key: Keypair, dial_timeout: Duration) -> Result<Swarm<BrowserBehaviour>> {
    let err = |e: &dyn std::fmt::Display| Error::Transport(e.to_string());
    let config = NodeConfig {
        full: false,
        relay: false,
        autonat: false,
        // The node's relay reservation keeps the connection to it busy; other connections
        // (circuits to browsers) close a minute after their last message.
        idle_timeout_secs: 60,
        ..NodeConfig::default()
    };
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_wasm_bindgen()
        .with_other_transport(|key| {
            // Small data-channel messages: see `webrtc_chunks`.
            let webrtc = webrtc_websys::Transport::new(webrtc_websys::Config::new(key))
                .map(|(peer, conn), _| (peer, ChunkedMuxer::new(conn)));
            TransportTimeout::with_outgoing_timeout(webrtc, dial_timeout)
        })
        .map_err(|e| err(&e))?
        .with_other_transport(|key| {
            let ws = websocket_websys::Transport::default()
                .upgrade(Version::V1)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default())
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                TransportTimeout::with_outgoing_timeout(ws, dial_timeout),
            )
        })
        .map_err(|e| err(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| err(&e))?
        .with_behaviour(|key, relay| BrowserBehaviour {
            node: Behaviour::new(key, relay, &config),
            msg: request_response::Behaviour::with_codec(
                msg::Codec::default(),
                [(msg::PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(msg::TIMEOUT)
                    .with_max_concurrent_streams(MAX_IN_FLIGHT),
            ),
        })
        .map_err(|e| err(&e))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(config.idle_timeout_secs))
        })
        .with_connection_timeout(dial_timeout.saturating_add(CONNECTION_TIMEOUT_SLACK))
        .build();
    Ok(swarm)
}
