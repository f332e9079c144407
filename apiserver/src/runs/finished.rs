//! Finished runs, answered from memory. A finished run never changes, so its answer is
//! prepared once (output escaped into JSON) and kept in a cache bounded by bytes; loading
//! from object storage is bounded too (a few at a time), so memory stays within a stated
//! bound whatever the records hold (`RUN_CACHE_MB`, plus a few runs being loaded and
//! answered outside it).
use std::sync::Arc;

use codeinterp_store::{OutputStream, RunRecord, Store, StoreError};
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use tokio::sync::Semaphore;

use crate::runs::model::{Links, Prepared, from_record};

/// Runs loaded from storage at once: each holds up to its whole output (2 MiB) escaped
/// into JSON (up to six times that).
const LOADS_AT_ONCE: usize = 4;

#[derive(Clone)]
struct ByBytes;

impl Weighter<(String, String), Arc<Prepared>> for ByBytes {
    fn weight(&self, _key: &(String, String), val: &Arc<Prepared>) -> u64 {
        val.weight() as u64 + 64
    }
}

pub struct FinishedRuns {
    cache: Cache<(String, String), Arc<Prepared>, ByBytes>,
    loads: Arc<Semaphore>,
}

impl FinishedRuns {
    pub fn new(bytes: u64) -> Self {
        FinishedRuns {
            cache: Cache::with_weighter(4096, bytes.max(1 << 20), ByBytes),
            loads: Arc::new(Semaphore::new(LOADS_AT_ONCE)),
        }
    }

    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<Prepared>> {
        self.cache.get(&(tenant.to_string(), id.to_string()))
    }

    /// Prepares the answer of a finished run from its record and stored output, and keeps
    /// it (when it fits the cache).
    pub async fn load(
        &self,
        store: &Store,
        tenant: &str,
        rec: &RunRecord,
        links: &Links<'_>,
    ) -> Result<Arc<Prepared>, StoreError> {
        let key = (tenant.to_string(), rec.id.clone());
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit);
        }
        let _permit = self.loads.acquire().await.expect("never closed");
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit);
        }
        let stdout = store.get_output(rec, OutputStream::Stdout).await?;
        let stderr = store.get_output(rec, OutputStream::Stderr).await?;
        let run = from_record(rec, &stdout, &stderr, links);
        drop((stdout, stderr));
        let prepared = Arc::new(Prepared::new(run, rec.artifacts.clone()));
        self.cache.insert(key, prepared.clone());
        Ok(prepared)
    }
}
