//! `libp2p-webrtc` 0.10 as a transport of the libp2p 0.56 facade.
//!
//! Why it exists: browsers (Chromium 150+, Firefox 146+) offer the post-quantum group
//! X25519MLKEM768 first in their DTLS ClientHello. `libp2p-webrtc` 0.9's DTLS
//! (webrtc-dtls 0.11) takes the first offered group without checking it and answers with a
//! fatal alert, so no stock browser could reach the node over WebRTC-direct. 0.10 (webrtc-rs
//! 0.17, `dtls` 0.17) skips groups it does not support. But 0.10 is built on libp2p-core
//! 0.44 / libp2p-identity 0.3, while the workspace is on the libp2p 0.56 facade (core 0.43,
//! identity 0.2) and cannot move to 0.57 yet (its libp2p-swarm pins a wasm-bindgen-futures
//! that conflicts with ours). 0.10 does not depend on libp2p-swarm, so both versions live in
//! the native build and this module converts between them: the key once at construction,
//! listener ids through a table, addresses and peer ids through their byte encodings
//! (the two cores use different `multiaddr` versions), and events and errors variant by
//! variant. Streams need no conversion: both sides use `futures`' `AsyncRead`/`AsyncWrite`.
//!
//! When to delete it: when the workspace moves to libp2p >= 0.57 (core 0.44), use
//! `libp2p_webrtc::tokio::Transport` directly, as before, and drop the `libp2p-core-044` and
//! `libp2p-identity-03` dependencies.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::FutureExt;
use futures::future::BoxFuture;
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent};
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::identity::Keypair;
use libp2p::{PeerId, Transport};
use libp2p_core_044 as core044;
use libp2p_webrtc::tokio as webrtc;

/// Errors of the WebRTC-direct transport and its connections.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// From `libp2p-webrtc` itself (boxed: it is large, and every poll returns it).
    #[error(transparent)]
    WebRtc(Box<webrtc::Error>),
    /// A value that does not convert between the two libp2p versions.
    #[error("libp2p-webrtc 0.10 -> libp2p 0.56: {0}")]
    Version(String),
}

impl From<webrtc::Error> for Error {
    fn from(e: webrtc::Error) -> Self {
        Self::WebRtc(Box::new(e))
    }
}

/// `libp2p-webrtc` 0.10's transport, implementing libp2p-core 0.43's `Transport`.
pub(crate) struct WebRtcTransport {
    inner: webrtc::Transport,
    /// The facade's listener ids and the ones given to `inner`, for as long as each
    /// listener is open (a handful: one per listen address).
    listeners: HashMap<ListenerId, core044::transport::ListenerId>,
}

impl WebRtcTransport {
    /// A transport for the node with identity `key`, serving `cert` (whose hash browsers
    /// dial as `/certhash`).
    pub(crate) fn new(key: &Keypair, cert: webrtc::Certificate) -> Result<Self, Error> {
        let bytes = key
            .to_protobuf_encoding()
            .map_err(|e| Error::Version(format!("identity key: {e}")))?;
        let key = libp2p_identity_03::Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| Error::Version(format!("identity key: {e}")))?;
        Ok(Self {
            inner: webrtc::Transport::new(key, cert),
            listeners: HashMap::new(),
        })
    }

    fn listener_for(&self, inner: core044::transport::ListenerId) -> Option<ListenerId> {
        self.listeners
            .iter()
            .find(|(_, i)| **i == inner)
            .map(|(id, _)| *id)
    }
}

type Upgrade = BoxFuture<'static, Result<(PeerId, Connection), Error>>;

impl Transport for WebRtcTransport {
    type Output = (PeerId, Connection);
    type Error = Error;
    type ListenerUpgrade = Upgrade;
    type Dial = Upgrade;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<Error>> {
        let Some(inner_addr) = to_044(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let inner_id = core044::transport::ListenerId::next();
        core044::Transport::listen_on(&mut self.inner, inner_id, inner_addr)
            .map_err(|e| from_044_error(e, addr))?;
        self.listeners.insert(id, inner_id);
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        // The entry goes when the listener reports `ListenerClosed`.
        match self.listeners.get(&id) {
            Some(inner_id) => core044::Transport::remove_listener(&mut self.inner, *inner_id),
            None => false,
        }
    }

    fn dial(&mut self, addr: Multiaddr, opts: DialOpts) -> Result<Upgrade, TransportError<Error>> {
        let Some(inner_addr) = to_044(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let inner_opts = core044::transport::DialOpts {
            role: match opts.role {
                Endpoint::Dialer => core044::Endpoint::Dialer,
                Endpoint::Listener => core044::Endpoint::Listener,
            },
            port_use: match opts.port_use {
                PortUse::New => core044::transport::PortUse::New,
                PortUse::Reuse => core044::transport::PortUse::Reuse,
            },
        };
        let dial = core044::Transport::dial(&mut self.inner, inner_addr, inner_opts)
            .map_err(|e| from_044_error(e, addr))?;
        Ok(upgrade(dial))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Upgrade, Error>> {
        use core044::transport::TransportEvent as Inner;
        loop {
            let event = ready!(core044::Transport::poll(Pin::new(&mut self.inner), cx));
            let inner_id = match &event {
                Inner::NewAddress { listener_id, .. }
                | Inner::AddressExpired { listener_id, .. }
                | Inner::Incoming { listener_id, .. }
                | Inner::ListenerClosed { listener_id, .. }
                | Inner::ListenerError { listener_id, .. } => *listener_id,
            };
            let Some(listener_id) = self.listener_for(inner_id) else {
                tracing::warn!(?inner_id, "WebRTC event for an unknown listener; dropped");
                continue;
            };
            let converted = match event {
                Inner::NewAddress { listen_addr, .. } => {
                    to_043(&listen_addr).map(|listen_addr| TransportEvent::NewAddress {
                        listener_id,
                        listen_addr,
                    })
                }
                Inner::AddressExpired { listen_addr, .. } => {
                    to_043(&listen_addr).map(|listen_addr| TransportEvent::AddressExpired {
                        listener_id,
                        listen_addr,
                    })
                }
                Inner::Incoming {
                    upgrade: inner,
                    local_addr,
                    send_back_addr,
                    ..
                } => match (to_043(&local_addr), to_043(&send_back_addr)) {
                    (Some(local_addr), Some(send_back_addr)) => Some(TransportEvent::Incoming {
                        listener_id,
                        upgrade: upgrade(inner),
                        local_addr,
                        send_back_addr,
                    }),
                    _ => None,
                },
                Inner::ListenerClosed { reason, .. } => {
                    self.listeners.remove(&listener_id);
                    Some(TransportEvent::ListenerClosed {
                        listener_id,
                        reason: reason.map_err(Error::from),
                    })
                }
                Inner::ListenerError { error, .. } => Some(TransportEvent::ListenerError {
                    listener_id,
                    error: error.into(),
                }),
            };
            match converted {
                Some(event) => return Poll::Ready(event),
                // Not expected: the WebRTC transport only produces ip/udp/webrtc-direct/certhash
                // addresses, which both multiaddr versions know.
                None => {
                    tracing::warn!("WebRTC event with an address libp2p 0.56 cannot parse; dropped")
                }
            }
        }
    }
}

/// A connection of `libp2p-webrtc` 0.10, implementing libp2p-core 0.43's `StreamMuxer`.
pub(crate) struct Connection(webrtc::Connection);

type Substream = <webrtc::Connection as core044::muxing::StreamMuxer>::Substream;

impl StreamMuxer for Connection {
    type Substream = Substream;
    type Error = Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Substream, Error>> {
        core044::muxing::StreamMuxer::poll_inbound(Pin::new(&mut self.0), cx).map_err(Error::from)
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Substream, Error>> {
        core044::muxing::StreamMuxer::poll_outbound(Pin::new(&mut self.0), cx).map_err(Error::from)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        core044::muxing::StreamMuxer::poll_close(Pin::new(&mut self.0), cx).map_err(Error::from)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Error>> {
        loop {
            let event = ready!(core044::muxing::StreamMuxer::poll(
                Pin::new(&mut self.0),
                cx
            ))?;
            let core044::muxing::StreamMuxerEvent::AddressChange(addr) = event;
            match to_043(&addr) {
                Some(addr) => return Poll::Ready(Ok(StreamMuxerEvent::AddressChange(addr))),
                None => {
                    tracing::warn!(%addr, "WebRTC address change libp2p 0.56 cannot parse; dropped")
                }
            }
        }
    }
}

/// The facade's view of a 0.10 dial or incoming connection.
fn upgrade(
    inner: BoxFuture<
        'static,
        Result<(libp2p_identity_03::PeerId, webrtc::Connection), webrtc::Error>,
    >,
) -> Upgrade {
    inner
        .map(|result| {
            let (peer, connection) = result?;
            let peer = PeerId::from_bytes(&peer.to_bytes())
                .map_err(|e| Error::Version(format!("peer id {peer}: {e}")))?;
            Ok((peer, Connection(connection)))
        })
        .boxed()
}

fn from_044_error(
    e: core044::transport::TransportError<webrtc::Error>,
    addr: Multiaddr,
) -> TransportError<Error> {
    match e {
        core044::transport::TransportError::MultiaddrNotSupported(_) => {
            TransportError::MultiaddrNotSupported(addr)
        }
        core044::transport::TransportError::Other(e) => TransportError::Other(e.into()),
    }
}

/// The two libp2p versions use `multiaddr` 0.18 and 0.19; their byte encodings agree.
fn to_044(addr: &Multiaddr) -> Option<core044::Multiaddr> {
    core044::Multiaddr::try_from(addr.to_vec()).ok()
}

fn to_043(addr: &core044::Multiaddr) -> Option<Multiaddr> {
    Multiaddr::try_from(addr.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The node's key is the same identity on both sides: 0.10 would otherwise
    /// authenticate the node as another peer than the one its records name.
    #[test]
    fn key_converts_to_the_same_peer_id() {
        let key = Keypair::generate_ed25519();
        let bytes = key.to_protobuf_encoding().unwrap();
        let inner = libp2p_identity_03::Keypair::from_protobuf_encoding(&bytes).unwrap();
        let peer = PeerId::from_bytes(&inner.public().to_peer_id().to_bytes()).unwrap();
        assert_eq!(peer, key.public().to_peer_id());
    }

    #[test]
    fn webrtc_direct_addresses_round_trip() {
        let cert = webrtc::Certificate::generate(&mut rand::rng()).unwrap();
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let inner: core044::Multiaddr = "/ip4/127.0.0.1/udp/9090/webrtc-direct".parse().unwrap();
        let inner = inner.with(core044::multiaddr::Protocol::Certhash(
            cert.fingerprint().to_multihash(),
        ));
        let addr = to_043(&inner).unwrap().with_p2p(peer).unwrap();
        assert_eq!(to_043(&to_044(&addr).unwrap()), Some(addr.clone()));
        assert!(addr.to_string().contains("/webrtc-direct/certhash/"));
    }
}
