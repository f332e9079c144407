//! What every handler shares: a cheap `Clone` of `Arc`s.
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use codeinterp_crds::CodeRun;
use codeinterp_store::Store;
use kube::{Api, Client};

use crate::auth::Keys;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::run_cache::RunCache;
use crate::run_object::Links;
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
    pub metrics: Metrics,
}

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

    /// Signed URLs made now expire together, `URL_TTL_SECONDS` from now.
    pub fn links(&self) -> Links<'_> {
        Links {
            signer: &self.signer,
            base_url: &self.settings.public_base_url,
            expires_at: now_unix() + self.settings.url_ttl.as_secs() as i64,
        }
    }
}
