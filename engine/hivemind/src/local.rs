//! A [`Transport`] between members in this process (tests, benchmarks, a trainer that runs
//! several workers): one channel per member, authenticated by construction.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::channel::mpsc;

use crate::allreduce::Transport;

type Inbox = mpsc::UnboundedSender<(usize, Vec<u8>)>;

/// One member's end of an in-process group.
#[derive(Debug)]
pub struct LocalTransport {
    me: usize,
    peers: Arc<Mutex<Vec<Option<Inbox>>>>,
    inbox: mpsc::UnboundedReceiver<(usize, Vec<u8>)>,
}

/// `n` connected members, in order.
pub fn group(n: usize) -> Vec<LocalTransport> {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded()).unzip();
    let peers = Arc::new(Mutex::new(txs.into_iter().map(Some).collect::<Vec<_>>()));
    rxs.into_iter()
        .enumerate()
        .map(|(me, inbox)| LocalTransport {
            me,
            peers: peers.clone(),
            inbox,
        })
        .collect()
}

impl LocalTransport {
    /// This member leaves: frames to it fail from now on, its inbox is closed.
    pub fn leave(&mut self) {
        if let Ok(mut p) = self.peers.lock() {
            p[self.me] = None;
        }
        self.inbox.close();
    }

    /// Sends raw bytes to `to` as this member (what a hostile member can do).
    pub fn send_raw(&self, to: usize, bytes: Vec<u8>) -> Result<(), String> {
        let peers = self
            .peers
            .lock()
            .map_err(|_| "the group's lock is poisoned".to_string())?;
        match peers.get(to) {
            Some(Some(tx)) => tx
                .unbounded_send((self.me, bytes))
                .map_err(|_| format!("member {to} has left")),
            Some(None) => Err(format!("member {to} has left")),
            None => Err(format!("no member {to}")),
        }
    }
}

impl Transport for LocalTransport {
    async fn send(&self, to: usize, frame: Vec<u8>) -> Result<(), String> {
        self.send_raw(to, frame)
    }

    async fn recv(&mut self) -> Option<(usize, Vec<u8>)> {
        self.inbox.next().await
    }
}
