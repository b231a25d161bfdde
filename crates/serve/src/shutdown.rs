//! The process's lifecycle: one root cancellation token and one task tracker, handed to
//! every long-lived task and every clean-up, so that stopping is *cancel, then wait for
//! what is still running (with a bound)* rather than a fixed sleep that either cuts work
//! short or waits for nothing.

use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` as part of the process: [`Shutdown::finish`] waits for it.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Runs a service that loops for the process's whole life (a watcher, a listener)
    /// until shutdown begins; tracked like any task.
    pub fn spawn_until_cancelled<F>(&self, service: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = service => {}
            }
        });
    }

    /// Resolves once shutdown has begun.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// A token cancelled with this one (for code that takes a token).
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Begins shutdown: every task watching [`Shutdown::cancelled`] stops.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Waits up to `bound` for every tracked task to end; `false` if some did not.
    pub async fn finish(&self, bound: Duration) -> bool {
        self.cancel();
        self.tracker.close();
        tokio::time::timeout(bound, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn finish_waits_for_tracked_work_within_its_bound() {
        let s = Shutdown::new();
        let watcher = s.clone();
        s.spawn(async move {
            watcher.cancelled().await;
            // Clean-up that takes a while.
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        assert!(s.finish(Duration::from_secs(5)).await);
        let stuck = Shutdown::new();
        stuck.spawn(std::future::pending::<()>());
        assert!(!stuck.finish(Duration::from_secs(1)).await);
        assert_eq!(stuck.running(), 1);
    }
}
