//! The capped task set: every task the core starts (requests, gossip, work) goes into one, so none
//! is queued without bound or outlives the core.

use std::future::Future;

use tokio::task::{AbortHandle, JoinSet};
use tracing::warn;

/// The most requests, gossip publications and other short tasks in flight at once; past it a new
/// one is dropped (with a warning) rather than queued without bound.
pub(crate) const MAX_TASKS: usize = 4096;

/// A capped set of tasks: each is tracked, reaped by the core loop, and aborted when the set is
/// shut down or dropped, so nothing the core starts outlives it.
pub(crate) struct Tasks {
    pub(super) set: JoinSet<()>,
    cap: usize,
    what: &'static str,
}

impl Tasks {
    pub fn new(cap: usize, what: &'static str) -> Self {
        Tasks {
            set: JoinSet::new(),
            cap: cap.max(1),
            what,
        }
    }

    /// Starts `f`, unless `cap` tasks are in flight already.
    pub(super) fn spawn<F: Future<Output = ()> + Send + 'static>(
        &mut self,
        f: F,
    ) -> Option<AbortHandle> {
        if self.set.len() >= self.cap {
            warn!(
                tasks = self.what,
                cap = self.cap,
                "too many tasks in flight; dropping a new one"
            );
            return None;
        }
        Some(self.set.spawn(f))
    }

    /// Waits for the next task to end (pending while there is none).
    pub(super) async fn reap(&mut self) {
        match self.set.join_next().await {
            Some(Err(e)) if e.is_panic() => warn!(tasks = self.what, error = %e, "a task panicked"),
            Some(_) => {}
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;

    #[tokio::test]
    async fn the_task_set_is_capped_and_aborts_on_shutdown() {
        let mut tasks = Tasks::new(2, "test");
        let (tx, mut rx) = mpsc::channel::<()>(1);
        for _ in 0..2 {
            let tx = tx.clone();
            let started = tasks.spawn(async move {
                std::future::pending::<()>().await;
                drop(tx);
            });
            assert!(started.is_some());
        }
        assert!(tasks.spawn(async {}).is_none(), "over the cap");
        drop(tx);
        tasks.set.shutdown().await;
        // Both tasks were aborted: their senders are gone, so the channel is closed.
        assert!(rx.recv().await.is_none());
        assert!(tasks.set.is_empty());
        assert!(tasks.spawn(async {}).is_some(), "room again");
        tokio::time::timeout(Duration::from_secs(5), tasks.reap())
            .await
            .expect("the finished task is reaped");
    }
}
