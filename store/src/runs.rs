//! Run records, their output, and the REST API's bindings and index of run ids.
use bytes::Bytes;
use codeinterp_crds::{ArtifactRef, Language, Phase, Reason, StartMode, Usage};
use object_store::path::Path;
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::index::{entry_id, entry_name, entry_path, take_page};
use crate::{Store, StoreError, segment};

/// The record version this code writes (records of the first layout read as 0).
pub const RECORD_VERSION: u32 = 2;
/// Bytes of each stream a record carries inline (lists show these).
pub const HEAD_BYTES: usize = 4096;

/// The program's two output streams, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    fn leaf(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// Why a run ended the way it did, as stored (the REST `error`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    pub code: Reason,
    pub message: String,
}

/// A finished run, as the operator stores it. Small: the output itself is stored beside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// 0 for records of the first layout, whose `stdout_head`/`stderr_head` hold the whole
    /// output (they were called `stdout` and `stderr`).
    #[serde(default)]
    pub v: u32,
    /// The run's id: the CodeRun's name.
    pub id: String,
    #[serde(default)]
    pub uid: String,
    pub tenant: String,
    pub namespace: String,
    #[serde(alias = "status")]
    pub phase: Phase,
    pub language: Language,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The first [`HEAD_BYTES`] of stdout (cut at a character boundary).
    #[serde(alias = "stdout")]
    pub stdout_head: String,
    #[serde(alias = "stderr")]
    pub stderr_head: String,
    /// Bytes of output kept (what is over `max_output_bytes` is not).
    #[serde(default)]
    pub stdout_bytes: u64,
    #[serde(default)]
    pub stderr_bytes: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub usage: Usage,
    pub artifacts: Vec<ArtifactRef>,
    pub error: Option<RunError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_mode: Option<StartMode>,
    /// The program ran in an interpreter started before its job (a warm pool's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preloaded: bool,
}

/// What the REST API writes when it creates a run: the CodeRun it created under the id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunBinding {
    pub uid: String,
    pub namespace: String,
    /// Creation time in milliseconds, which orders the index.
    pub created_ms: i64,
    /// A record of the first layout, stored under the id alone.
    #[serde(default)]
    pub legacy: bool,
}

/// One page of a tenant's run ids, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPage {
    pub ids: Vec<String>,
    pub has_more: bool,
}

/// The first `max` bytes of `bytes` as text, cut at a character boundary; invalid UTF-8 is
/// shown as U+FFFD.
pub fn head(bytes: &[u8], max: usize) -> String {
    let mut end = bytes.len().min(max);
    if end < bytes.len() {
        // Do not cut a multi-byte character in two.
        if let Err(e) = std::str::from_utf8(&bytes[..end])
            && e.error_len().is_none()
        {
            end = e.valid_up_to();
        }
    }
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `i64::MAX - ms`, zero-padded: ascending key order is newest first.
fn index_name(created_ms: i64, id: &str) -> String {
    entry_name(newest_first(created_ms), id)
}

/// An entry's name in the first, flat layout of the run index (which had the same names).
#[cfg(test)]
pub(crate) fn tests_index_name(created_ms: i64, id: &str) -> String {
    index_name(created_ms, id)
}

/// A time in milliseconds as an index key that sorts the newest first.
pub(crate) fn newest_first(ms: i64) -> u64 {
    (i64::MAX - ms.max(0)) as u64
}

impl Store {
    fn run_dir(&self, tenant: &str, namespace: &str, uid: &str) -> Result<Path, StoreError> {
        Ok(self.key(&[
            "tenants",
            segment(tenant)?,
            "runs",
            segment(namespace)?,
            segment(uid)?,
        ]))
    }

    fn legacy_key(&self, tenant: &str, id: &str) -> Result<Path, StoreError> {
        Ok(self.key(&[
            "tenants",
            segment(tenant)?,
            "runs",
            &format!("{}.json", segment(id)?),
        ]))
    }

    fn binding_key(&self, tenant: &str, id: &str) -> Result<Path, StoreError> {
        Ok(self.key(&[
            "tenants",
            segment(tenant)?,
            "run-ids",
            &format!("{}.json", segment(id)?),
        ]))
    }

    pub(crate) fn index_prefix(&self, tenant: &str) -> Result<Path, StoreError> {
        Ok(self.key(&["tenants", segment(tenant)?, "run-index"]))
    }

    /// Where a run's record goes (for its status).
    pub fn record_key(
        &self,
        tenant: &str,
        namespace: &str,
        uid: &str,
    ) -> Result<String, StoreError> {
        Ok(self
            .run_dir(tenant, namespace, uid)?
            .child("record.json")
            .to_string())
    }

    /// Stores one stream of a run's output, byte for byte.
    pub async fn put_output(
        &self,
        tenant: &str,
        namespace: &str,
        uid: &str,
        stream: OutputStream,
        bytes: Bytes,
    ) -> Result<(), StoreError> {
        let key = self.run_dir(tenant, namespace, uid)?.child(stream.leaf());
        self.inner.put(&key, PutPayload::from(bytes)).await?;
        Ok(())
    }

    /// Stores the record (after the output it describes) and returns its key.
    pub async fn put_run(&self, rec: &RunRecord) -> Result<String, StoreError> {
        let key = self
            .run_dir(&rec.tenant, &rec.namespace, &rec.uid)?
            .child("record.json");
        self.inner
            .put(&key, PutPayload::from(serde_json::to_vec(rec)?))
            .await?;
        Ok(key.to_string())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &Path,
    ) -> Result<Option<T>, StoreError> {
        match self.inner.get(key).await {
            Ok(r) => Ok(Some(serde_json::from_slice(&r.bytes().await?)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The record of the run with this UID, if it has finished.
    pub async fn get_run(
        &self,
        tenant: &str,
        namespace: &str,
        uid: &str,
    ) -> Result<Option<RunRecord>, StoreError> {
        let key = self.run_dir(tenant, namespace, uid)?.child("record.json");
        self.get_json(&key).await
    }

    /// A run's whole output on one stream (for an answer that carries all of it; a replay
    /// reads [`Store::output`] in ranges instead).
    pub async fn get_output(
        &self,
        rec: &RunRecord,
        stream: OutputStream,
    ) -> Result<Bytes, StoreError> {
        if rec.v < RECORD_VERSION {
            let text = match stream {
                OutputStream::Stdout => &rec.stdout_head,
                OutputStream::Stderr => &rec.stderr_head,
            };
            return Ok(Bytes::from(text.clone()));
        }
        let key = self.output_key(rec, stream)?;
        match self.inner.get(&key).await {
            Ok(r) => Ok(r.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Ok(Bytes::new()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn output_key(
        &self,
        rec: &RunRecord,
        stream: OutputStream,
    ) -> Result<Path, StoreError> {
        Ok(self
            .run_dir(&rec.tenant, &rec.namespace, &rec.uid)?
            .child(stream.leaf()))
    }

    /// Binds a run id of the tenant to the CodeRun the REST API created under it, and lists
    /// it. A binding is written once: a second bind of the same id is refused.
    pub async fn bind_run(
        &self,
        tenant: &str,
        id: &str,
        binding: &RunBinding,
    ) -> Result<bool, StoreError> {
        let key = self.binding_key(tenant, id)?;
        let body = PutPayload::from(serde_json::to_vec(binding)?);
        match self
            .inner
            .put_opts(&key, body, PutOptions::from(PutMode::Create))
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => return Ok(false),
            // Backends without conditional writes: check, then write.
            Err(object_store::Error::NotImplemented) => {
                if self.binding(tenant, id).await?.is_some() {
                    return Ok(false);
                }
                self.inner
                    .put(&key, PutPayload::from(serde_json::to_vec(binding)?))
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
        self.inner
            .put(
                &self.run_index_key(tenant, binding.created_ms, id)?,
                PutPayload::new(),
            )
            .await?;
        Ok(true)
    }

    /// Where the index entry of the tenant's run `id`, created at `created_ms`, is stored
    /// (its key below the store's root; a benchmark writes entries directly).
    pub fn run_index_key(
        &self,
        tenant: &str,
        created_ms: i64,
        id: &str,
    ) -> Result<Path, StoreError> {
        let name = index_name(created_ms, segment(id)?);
        Ok(entry_path(&self.index_prefix(tenant)?, &name))
    }

    pub async fn binding(&self, tenant: &str, id: &str) -> Result<Option<RunBinding>, StoreError> {
        match self.binding_key(tenant, id) {
            Ok(key) => self.get_json(&key).await,
            Err(StoreError::Name(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The finished run the tenant knows by this id: the record of the CodeRun the REST API
    /// bound to it, or a record of the first layout.
    pub async fn get_run_by_id(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<RunRecord>, StoreError> {
        match self.binding(tenant, id).await? {
            Some(b) if !b.legacy => self.get_run(tenant, &b.namespace, &b.uid).await,
            _ => match self.legacy_key(tenant, id) {
                Ok(key) => self.get_json(&key).await,
                Err(StoreError::Name(_)) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// A page of the tenant's run ids, newest first, after the run `after`. Reads names
    /// only, and only as many as the page takes: its cost does not grow with the index.
    /// Records and index entries of earlier layouts are indexed when first seen.
    pub async fn list_run_ids(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<RunPage>, StoreError> {
        self.index_legacy_records(tenant).await?;
        let prefix = self.index_prefix(tenant)?;
        self.file_flat_index_entries(&prefix).await?;
        let after = match after {
            None => None,
            Some(id) => match self.binding(tenant, id).await? {
                Some(b) => Some(index_name(b.created_ms, id)),
                None => return Ok(None),
            },
        };
        let names = self.index_names(&prefix, after.as_deref()).await?;
        let (ids, has_more) = take_page(names, limit, |name| async move {
            Ok(entry_id(&name).map(str::to_string))
        })
        .await?;
        Ok(Some(RunPage { ids, has_more }))
    }

    /// Entries of the first index lie flat under `run-index/` (and would sort among the
    /// tree's directories, out of order): moves them into the tree. One directory read when
    /// there are none.
    async fn file_flat_index_entries(&self, prefix: &Path) -> Result<(), StoreError> {
        let listing = self.inner.list_with_delimiter(Some(prefix)).await?;
        for meta in listing.objects {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if entry_id(name).is_none() {
                continue;
            }
            self.inner
                .put(&entry_path(prefix, name), PutPayload::new())
                .await?;
            self.delete_if_present(&meta.location).await?;
        }
        Ok(())
    }

    /// Records of the first layout (`runs/<id>.json`) have no binding: read each once (one
    /// at a time, so memory stays that of one record) and bind and index it.
    async fn index_legacy_records(&self, tenant: &str) -> Result<(), StoreError> {
        let dir = self.key(&["tenants", segment(tenant)?, "runs"]);
        let listing = self.inner.list_with_delimiter(Some(&dir)).await?;
        for meta in listing.objects {
            let Some(id) = meta
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".json"))
            else {
                continue;
            };
            if self.binding(tenant, id).await?.is_some() {
                continue;
            }
            let Some(rec) = self.get_json::<RunRecord>(&meta.location).await? else {
                continue;
            };
            let binding = RunBinding {
                uid: rec.uid.clone(),
                namespace: rec.namespace.clone(),
                created_ms: rec.created_at.saturating_mul(1000),
                legacy: true,
            };
            self.bind_run(tenant, id, &binding).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        (dir, store)
    }

    fn record(id: &str, uid: &str) -> RunRecord {
        RunRecord {
            v: RECORD_VERSION,
            id: id.into(),
            uid: uid.into(),
            tenant: "acme".into(),
            namespace: "sandbox".into(),
            phase: Phase::Completed,
            language: Language::Python,
            created_at: 100,
            started_at: Some(101),
            completed_at: Some(102),
            exit_code: Some(0),
            signal: None,
            stdout_head: "2\n".into(),
            stderr_head: String::new(),
            stdout_bytes: 2,
            stderr_bytes: 0,
            stdout_truncated: false,
            stderr_truncated: false,
            usage: Usage::default(),
            artifacts: vec![],
            error: None,
            start_mode: Some(StartMode::Warm),
            preloaded: false,
        }
    }

    fn binding(uid: &str, created_ms: i64) -> RunBinding {
        RunBinding {
            uid: uid.into(),
            namespace: "sandbox".into(),
            created_ms,
            legacy: false,
        }
    }

    #[tokio::test]
    async fn a_bound_id_reads_the_record_of_the_uid_it_was_bound_to_and_no_other() {
        let (_dir, store) = store();
        store
            .put_output(
                "acme",
                "sandbox",
                "uid-1",
                OutputStream::Stdout,
                Bytes::from_static(b"2\n"),
            )
            .await
            .unwrap();
        store.put_run(&record("run-a", "uid-1")).await.unwrap();
        // Another CodeRun of the same name (elsewhere, or recreated) stores its own record.
        let mut forged = record("run-a", "uid-2");
        forged.stdout_head = "forged".into();
        store.put_run(&forged).await.unwrap();

        assert!(
            store
                .bind_run("acme", "run-a", &binding("uid-1", 5))
                .await
                .unwrap()
        );
        assert!(
            !store
                .bind_run("acme", "run-a", &binding("uid-2", 6))
                .await
                .unwrap()
        );
        let got = store.get_run_by_id("acme", "run-a").await.unwrap().unwrap();
        assert_eq!(got.uid, "uid-1");
        assert_eq!(got.stdout_head, "2\n");
        assert_eq!(
            store.get_output(&got, OutputStream::Stdout).await.unwrap(),
            Bytes::from_static(b"2\n")
        );
        assert_eq!(store.get_run_by_id("other", "run-a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn ids_are_listed_newest_first_in_pages_without_reading_records() {
        let (_dir, store) = store();
        for (i, id) in ["run-a", "run-b", "run-c"].iter().enumerate() {
            store
                .bind_run("acme", id, &binding(&format!("u{i}"), 1000 * i as i64))
                .await
                .unwrap();
        }
        let page = store.list_run_ids("acme", None, 2).await.unwrap().unwrap();
        assert_eq!(page.ids, ["run-c", "run-b"]);
        assert!(page.has_more);
        let page = store
            .list_run_ids("acme", Some("run-b"), 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(page.ids, ["run-a"]);
        assert!(!page.has_more);
        assert_eq!(
            store.list_run_ids("acme", Some("run-x"), 2).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_record_of_the_first_layout_is_read_by_id_and_listed() {
        let (dir, store) = store();
        let legacy = include_str!("../tests/fixtures/record-v1.json");
        let path = dir.path().join("tenants/dev/runs");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("run-legacy1.json"), legacy).unwrap();

        let rec = store
            .get_run_by_id("dev", "run-legacy1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rec.phase, Phase::TimedOut);
        assert_eq!(rec.language, Language::Node);
        assert_eq!(rec.usage.wall_ms, 3000);
        assert_eq!(rec.artifacts[0].name, "out/a.csv");
        assert_eq!(rec.error.as_ref().unwrap().code, Reason::TimedOut);
        let out = store.get_output(&rec, OutputStream::Stdout).await.unwrap();
        assert_eq!(out, Bytes::from_static(b"the whole output"));

        let page = store.list_run_ids("dev", None, 10).await.unwrap().unwrap();
        assert_eq!(page.ids, ["run-legacy1"]);
        // Indexed once: a second listing finds the binding and reads nothing more.
        let page = store.list_run_ids("dev", None, 10).await.unwrap().unwrap();
        assert_eq!(page.ids, ["run-legacy1"]);
        assert!(
            store
                .get_run_by_id("dev", "run-legacy1")
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn path_like_ids_are_refused_not_followed() {
        let (_dir, store) = store();
        assert_eq!(store.get_run_by_id("acme", "../x").await.unwrap(), None);
        assert!(matches!(
            store.get_run("acme", "../x", "u").await,
            Err(StoreError::Name(_))
        ));
        let long = "a".repeat(200);
        let err = store.put_run(&record(&long, &long)).await.unwrap_err();
        assert!(err.is_permanent());
    }

    #[test]
    fn a_head_is_cut_at_a_character_boundary() {
        assert_eq!(head("héllo".as_bytes(), 2), "h");
        assert_eq!(head("héllo".as_bytes(), 3), "hé");
        assert_eq!(head(b"abc", 10), "abc");
        assert_eq!(head(b"\xff\xfeabc", 10), "\u{fffd}\u{fffd}abc");
    }
}
