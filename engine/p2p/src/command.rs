//! The command pattern both node loops share: a handle sends a command carrying a oneshot
//! reply over a bounded queue, and the loop answers on that oneshot. Built on futures'
//! channels, so the same code runs on tokio natively and on a page's event loop.

use futures::SinkExt;
use futures::channel::{mpsc, oneshot};

use crate::error::{Error, Result};

/// Where a command's answer goes.
pub(crate) type Reply<T> = oneshot::Sender<T>;

/// The sending side of a loop's bounded command queue.
pub(crate) struct Commands<C>(mpsc::Sender<C>);

/// A queue of `capacity` commands (futures' bounded channel adds one slot per sender), and
/// the receiver the loop reads.
pub(crate) fn channel<C>(capacity: usize) -> (Commands<C>, mpsc::Receiver<C>) {
    let (tx, rx) = mpsc::channel(capacity);
    (Commands(tx), rx)
}

impl<C> Commands<C> {
    /// Sends the command `make` builds around a fresh reply, and waits for the answer.
    /// [`Error::NodeStopped`] if the loop is gone before it answers.
    pub(crate) async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> C) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        // A clone per request: `send` needs `&mut`, and handles are shared by many tasks.
        self.0
            .clone()
            .send(make(tx))
            .await
            .map_err(|_| Error::NodeStopped)?;
        rx.await.map_err(|_| Error::NodeStopped)
    }
}

// By hand: derives would ask `C: Clone` / `C: Debug`, which commands (holding oneshots)
// are not.
impl<C> Clone for Commands<C> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<C> std::fmt::Debug for Commands<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands")
            .field("closed", &self.0.is_closed())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    enum Cmd {
        Double(u32, Reply<u32>),
    }

    #[tokio::test]
    async fn ask_gets_the_loops_answer_and_fails_once_the_loop_is_gone() {
        let (commands, mut rx) = channel(1);
        let serve = async {
            if let Some(Cmd::Double(n, tx)) = rx.next().await {
                let _ = tx.send(n * 2);
            }
        };
        let (answer, ()) = futures::join!(commands.ask(|tx| Cmd::Double(21, tx)), serve);
        assert_eq!(answer.ok(), Some(42));
        drop(rx);
        let err = commands.ask(|tx| Cmd::Double(1, tx)).await;
        assert!(matches!(err, Err(Error::NodeStopped)));
    }
}
