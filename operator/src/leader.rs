//! Leader election on a Lease (kube-lease-manager): every replica runs, one is active. A
//! replica that loses the lease stops at once (its process exits and restarts as a
//! standby), so two never act on the same runs for longer than the lease's grace. One asked
//! to stop hands the lease back first, so a standby takes over without waiting for it to
//! expire.
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;

pub struct Leadership {
    leading: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

/// Waits until this replica holds the lease.
pub async fn acquire(client: Client, cfg: &Config, identity: &str) -> anyhow::Result<Leadership> {
    let duration = cfg.lease_duration_seconds;
    let manager = LeaseManagerBuilder::new(client, &cfg.lease_name)
        .with_namespace(cfg.lease_namespace())
        .with_identity(identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    tracing::info!(lease = %cfg.lease_name, identity, "waiting to lead");
    while !*leading.borrow_and_update() {
        leading.changed().await?;
    }
    tracing::info!(lease = %cfg.lease_name, identity, "leading");
    Ok(Leadership { leading, task })
}

impl Leadership {
    /// Resolves when the lease is lost.
    pub async fn lost(&mut self) {
        while *self.leading.borrow_and_update() {
            if self.leading.changed().await.is_err() {
                return;
            }
        }
    }

    /// Hands the lease back (closing the channel makes the manager release it).
    pub async fn step_down(self) {
        drop(self.leading);
        match tokio::time::timeout(Duration::from_secs(3), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("lease released"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the lease"),
            _ => tracing::warn!("the lease was not released in time; it expires on its own"),
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
