//! What every handler shares: a cheap `Clone` of `Arc`s.
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use codeinterp_crds::{CodeContainer, CodeRun};
use codeinterp_store::{Quota, Store};
use kube::{Api, Client};

use crate::auth::Keys;
use crate::config::Settings;
use crate::containers::service::CreationLocks;
use crate::files::budget::UploadBudget;
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::run_cache::{ContainerCache, RunCache};
use crate::runs::events::StreamSlots;
use crate::runs::finished::FinishedRuns;
use crate::runs::model::Links;
use crate::signing::Signer;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub keys: Arc<Keys>,
    pub rate_limits: Arc<RateLimits>,
    pub signer: Arc<Signer>,
    pub store: Store,
    pub kube: Client,
    pub runs: RunCache,
    pub containers: ContainerCache,
    /// One container creation at a time per tenant (its cap is counted then).
    pub container_locks: Arc<CreationLocks>,
    pub metrics: Metrics,
    /// Finished runs, answered from memory.
    pub finished: Arc<FinishedRuns>,
    /// Run ids bound to the UID of the CodeRun created under them.
    pub bindings: Arc<quick_cache::sync::Cache<(String, String), String>>,
    /// The last readiness answer, reused for a moment.
    pub readiness: Arc<Readiness>,
    /// Open event streams per tenant.
    pub streams: Arc<StreamSlots>,
    /// What uploads in progress hold in memory.
    pub uploads: Arc<UploadBudget>,
    /// What each tenant stores, against its storage quota.
    pub quota: Arc<Quota>,
    /// Runs being created, not in the cache yet.
    pub joining: Arc<crate::runs::joining::Joining>,
}

/// Run ids whose binding is remembered.
pub const BINDINGS_CACHED: usize = 100_000;

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl AppState {
    pub fn coderuns(&self) -> Api<CodeRun> {
        Api::namespaced(self.kube.clone(), self.runs.namespace())
    }

    pub fn codecontainers(&self) -> Api<CodeContainer> {
        Api::namespaced(self.kube.clone(), self.containers.namespace())
    }

    /// Signed URLs made now expire together, `URL_TTL_SECONDS` from now.
    pub fn links(&self) -> Links<'_> {
        Links {
            signer: &self.signer,
            base_url: &self.settings.public_base_url,
            expires_at: now_unix() + self.settings.url_ttl.as_secs() as i64,
        }
    }
}
