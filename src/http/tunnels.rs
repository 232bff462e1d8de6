//! Upgraded connections (websockets and other `Connection: upgrade` protocols) being tunnelled
//! between a client and an upstream: each runs in its own task, lives at most its limit, is
//! counted, and is waited for (then cut) when the server shuts down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::proxy;

/// The tunnels of one server.
#[derive(Debug, Clone, Default)]
pub struct Tunnels {
    /// The running tunnels.
    tracker: TaskTracker,
    /// Cuts them at the end of a shutdown.
    stop: CancellationToken,
    /// Tunnels opened so far.
    opened: Arc<AtomicU64>,
}

impl Tunnels {
    /// No tunnels yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins `client` and `upstream` once both upgrades complete, in the background, for at
    /// most `limit`; `hold` (a call's record, say) is kept until the tunnel ends.
    pub fn spawn<H: Send + 'static>(
        &self,
        client: OnUpgrade,
        upstream: OnUpgrade,
        limit: Option<Duration>,
        hold: H,
    ) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            let _hold = hold;
            tokio::select! {
                r = proxy::tunnel(client, upstream, limit) => match r {
                    Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
                    Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
                },
                _ = stop.cancelled() => {}
            }
        });
    }

    /// Tunnels open now.
    pub fn open(&self) -> usize {
        self.tracker.len()
    }

    /// Tunnels opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Waits for the open tunnels to end, up to `limit`, then cuts those still open.
    pub async fn drain(&self, limit: Duration) {
        self.tracker.close();
        if tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tunnels = self.tracker.len(),
                "closing upgraded connections still open"
            );
        }
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
    }
}
