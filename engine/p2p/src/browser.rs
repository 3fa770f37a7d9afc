//! Browser transports: a browser node dials out over WebRTC-direct (`/webrtc-direct/
//! certhash/...`) and WebSocket (`/ws`, `/wss`), both through `web-sys`, with noise + yamux
//! over WebSocket and the relay client on top. The page-side node that drives the swarm
//! is built by the browser work (out of scope here); this module keeps the swarm building
//! for `wasm32-unknown-unknown`.

use std::time::Duration;

use libp2p::core::Transport;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::identity::Keypair;
use libp2p::{Swarm, SwarmBuilder, noise, webrtc_websys, websocket_websys, yamux};

use crate::behaviour::Behaviour;
use crate::config::NodeConfig;
use crate::error::{Error, Result};

/// Builds a browser swarm for `key`. Pass `full = false` in `config`: a browser is a DHT
/// client and never enters routing tables.
pub fn build_swarm(key: Keypair, config: &NodeConfig) -> Result<Swarm<Behaviour>> {
    let err = |e: &dyn std::fmt::Display| Error::Transport(e.to_string());
    let idle = Duration::from_secs(config.idle_timeout_secs.max(1));
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_wasm_bindgen()
        .with_other_transport(|key| {
            webrtc_websys::Transport::new(webrtc_websys::Config::new(key))
                .or_transport(
                    websocket_websys::Transport::default()
                        .upgrade(libp2p::core::upgrade::Version::V1)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default()),
                )
                .map(|either, _| match either {
                    futures::future::Either::Left((p, c)) => (p, StreamMuxerBox::new(c)),
                    futures::future::Either::Right((p, c)) => (p, StreamMuxerBox::new(c)),
                })
                .pipe_ok()
        })
        .map_err(|e| err(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| err(&e))?
        .with_behaviour(|key, relay| Behaviour::new(key, relay, config))
        .map_err(|e| err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build();
    Ok(swarm)
}

trait PipeOk: Sized {
    fn pipe_ok(self) -> std::result::Result<Self, noise::Error> {
        Ok(self)
    }
}
impl<T> PipeOk for T {}
