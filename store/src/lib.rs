//! Where results live in object storage, and in what shape. The operator writes a run's
//! record and its output files; the REST API serves them, also after the CodeRun is gone.
//!
//! Layout, under the store's root:
//! - `tenants/<tenant>/runs/<run id>.json`: the final [`RunRecord`];
//! - `tenants/<tenant>/files/<file id>/meta.json`: a [`FileMeta`];
//! - `tenants/<tenant>/files/<file id>/content`: the file's bytes;
//! - `index/files/<file id>.json`: a [`FileIndexEntry`] naming the file's tenant, so a signed
//!   download URL (which carries no bearer token) can find the file.
#![forbid(unsafe_code)]

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

/// Tenant of runs applied with kubectl without a tenant label. API key labels cannot start
/// with an underscore, so no REST tenant can collide with it.
pub const CLUSTER_TENANT: &str = "_cluster";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid STORAGE_URL {0:?}: {1}")]
    Url(String, String),
    #[error("object storage: {0}")]
    Backend(#[from] object_store::Error),
    #[error("stored object is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid name {0:?}")]
    Name(String),
}

/// A run as the REST API returns it (without signed URLs, which are made when served).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub tenant: String,
    pub namespace: String,
    pub status: String,
    pub language: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub usage: RunUsage,
    pub artifacts: Vec<ArtifactRecord>,
    pub error: Option<RunError>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunUsage {
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub memory_peak_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub id: String,
    pub filename: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    pub code: String,
    pub message: String,
}

/// A stored file: uploaded through `/v1/files`, or written by a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub id: String,
    pub tenant: String,
    pub bytes: u64,
    pub created_at: i64,
    pub filename: String,
    pub purpose: String,
    pub sha256: String,
    /// The run that wrote it, for output files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// Where a file id lives: written with every file's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIndexEntry {
    pub tenant: String,
}

/// A handle on the object store, cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    root: Path,
}

/// Ids and tenants become path segments: allow only a safe alphabet.
fn segment(s: &str) -> Result<&str, StoreError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with('.');
    if ok {
        Ok(s)
    } else {
        Err(StoreError::Name(s.to_string()))
    }
}

impl Store {
    /// Opens `STORAGE_URL`: a local directory (a plain path or `file:///...`, created if
    /// missing) or any URL object_store understands (`s3://bucket/prefix`, configured by the
    /// usual `AWS_*` variables, e.g. `AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for a local server).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let bad = |e: String| StoreError::Url(url.to_string(), e);
        if !url.contains("://") || url.starts_with("file://") {
            let dir = url.trim_start_matches("file://");
            std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| bad(e.to_string()))?;
            return Ok(Store {
                inner: Arc::new(local),
                root: Path::default(),
            });
        }
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let (inner, root) =
            object_store::parse_url_opts(&parsed, env).map_err(|e| bad(e.to_string()))?;
        Ok(Store {
            inner: Arc::from(inner),
            root,
        })
    }

    fn key(&self, parts: &[&str]) -> Path {
        let mut p = self.root.clone();
        for part in parts {
            p = p.child(*part);
        }
        p
    }

    fn run_key(&self, tenant: &str, id: &str) -> Result<Path, StoreError> {
        Ok(self.key(&[
            "tenants",
            segment(tenant)?,
            "runs",
            &format!("{}.json", segment(id)?),
        ]))
    }

    fn file_key(&self, tenant: &str, id: &str, leaf: &str) -> Result<Path, StoreError> {
        Ok(self.key(&["tenants", segment(tenant)?, "files", segment(id)?, leaf]))
    }

    fn file_index_key(&self, id: &str) -> Result<Path, StoreError> {
        Ok(self.key(&["index", "files", &format!("{}.json", segment(id)?)]))
    }

    pub fn run_record_key(&self, tenant: &str, id: &str) -> Result<String, StoreError> {
        Ok(self.run_key(tenant, id)?.to_string())
    }

    pub async fn put_run(&self, rec: &RunRecord) -> Result<(), StoreError> {
        let key = self.run_key(&rec.tenant, &rec.id)?;
        self.inner
            .put(&key, PutPayload::from(serde_json::to_vec(rec)?))
            .await?;
        Ok(())
    }

    pub async fn get_run(&self, tenant: &str, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let key = self.run_key(tenant, id)?;
        match self.inner.get(&key).await {
            Ok(r) => Ok(Some(serde_json::from_slice(&r.bytes().await?)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs of a tenant whose records are stored, newest first (for listings once the
    /// CodeRuns are gone).
    pub async fn list_runs(&self, tenant: &str) -> Result<Vec<RunRecord>, StoreError> {
        let prefix = self.key(&["tenants", segment(tenant)?, "runs"]);
        let metas: Vec<_> = self.inner.list(Some(&prefix)).try_collect().await?;
        let mut out = Vec::with_capacity(metas.len());
        for m in metas {
            let r = self.inner.get(&m.location).await?;
            out.push(serde_json::from_slice::<RunRecord>(&r.bytes().await?)?);
        }
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(out)
    }

    /// Stores a file whose bytes are all at hand (run outputs; they are small).
    pub async fn put_file(&self, meta: &FileMeta, content: Bytes) -> Result<(), StoreError> {
        let content_key = self.file_key(&meta.tenant, &meta.id, "content")?;
        self.inner
            .put(&content_key, PutPayload::from(content))
            .await?;
        self.put_file_meta(meta).await
    }

    /// Stores a file's bytes from a stream, without holding it all in memory, and returns
    /// its size and sha256. The caller writes the metadata afterwards (so a file is listed
    /// only once its bytes are all there) and may refuse it by size as it streams.
    pub async fn put_file_stream<E: std::fmt::Display>(
        &self,
        tenant: &str,
        id: &str,
        mut chunks: BoxStream<'_, Result<Bytes, E>>,
        max_bytes: u64,
    ) -> Result<Result<(u64, String), UploadError>, StoreError> {
        use sha2::Digest;
        let key = self.file_key(tenant, id, "content")?;
        let mut upload = object_store::WriteMultipart::new(self.inner.put_multipart(&key).await?);
        let mut size = 0u64;
        let mut hash = sha2::Sha256::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    upload.abort().await?;
                    return Ok(Err(UploadError::Body(e.to_string())));
                }
            };
            size += chunk.len() as u64;
            if size > max_bytes {
                upload.abort().await?;
                return Ok(Err(UploadError::TooLarge(max_bytes)));
            }
            hash.update(&chunk);
            upload.wait_for_capacity(4).await?;
            upload.write(&chunk);
        }
        upload.finish().await?;
        Ok(Ok((size, hex::encode(hash.finalize()))))
    }

    /// Writes a file's metadata, after its index entry: a listed file can always be found
    /// by its id alone.
    pub async fn put_file_meta(&self, meta: &FileMeta) -> Result<(), StoreError> {
        let key = self.file_key(&meta.tenant, &meta.id, "meta.json")?;
        self.put_file_index(&meta.id, &meta.tenant).await?;
        self.inner
            .put(&key, PutPayload::from(serde_json::to_vec(meta)?))
            .await?;
        Ok(())
    }

    async fn put_file_index(&self, id: &str, tenant: &str) -> Result<(), StoreError> {
        let entry = FileIndexEntry {
            tenant: segment(tenant)?.to_string(),
        };
        self.inner
            .put(
                &self.file_index_key(id)?,
                PutPayload::from(serde_json::to_vec(&entry)?),
            )
            .await?;
        Ok(())
    }

    /// The tenant that owns a file id, for requests that carry no bearer token (signed
    /// URLs). Files stored before the index existed are found by looking in every tenant,
    /// and indexed then.
    pub async fn file_tenant(&self, id: &str) -> Result<Option<String>, StoreError> {
        let key = match self.file_index_key(id) {
            Ok(k) => k,
            Err(StoreError::Name(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match self.inner.get(&key).await {
            Ok(r) => {
                let entry: FileIndexEntry = serde_json::from_slice(&r.bytes().await?)?;
                return Ok(Some(entry.tenant));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let tenants = self
            .inner
            .list_with_delimiter(Some(&self.key(&["tenants"])))
            .await?;
        for prefix in tenants.common_prefixes {
            let Some(tenant) = prefix.filename() else {
                continue;
            };
            if self.get_file_meta(tenant, id).await?.is_some() {
                self.put_file_index(id, tenant).await?;
                return Ok(Some(tenant.to_string()));
            }
        }
        Ok(None)
    }

    /// Removes the bytes of an upload that was refused after they were written (no
    /// metadata exists yet, so nothing lists it).
    pub async fn discard_upload(&self, tenant: &str, id: &str) -> Result<(), StoreError> {
        match self
            .inner
            .delete(&self.file_key(tenant, id, "content")?)
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_file_meta(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<FileMeta>, StoreError> {
        let key = match self.file_key(tenant, id, "meta.json") {
            Ok(k) => k,
            Err(StoreError::Name(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match self.inner.get(&key).await {
            Ok(r) => Ok(Some(serde_json::from_slice(&r.bytes().await?)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A file's bytes as a stream (for downloads).
    pub async fn get_file_content(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, StoreError> {
        let key = self.file_key(tenant, id, "content")?;
        Ok(self.inner.get(&key).await?.into_stream())
    }

    /// A file's bytes at once (for run inputs, which are small).
    pub async fn get_file_bytes(&self, tenant: &str, id: &str) -> Result<Bytes, StoreError> {
        let key = self.file_key(tenant, id, "content")?;
        Ok(self.inner.get(&key).await?.bytes().await?)
    }

    pub async fn list_files(&self, tenant: &str) -> Result<Vec<FileMeta>, StoreError> {
        let prefix = self.key(&["tenants", segment(tenant)?, "files"]);
        let metas: Vec<_> = self.inner.list(Some(&prefix)).try_collect().await?;
        let mut out = Vec::new();
        for m in metas
            .into_iter()
            .filter(|m| m.location.filename() == Some("meta.json"))
        {
            let r = self.inner.get(&m.location).await?;
            out.push(serde_json::from_slice::<FileMeta>(&r.bytes().await?)?);
        }
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(out)
    }

    /// Deletes a file's metadata first (so it stops being listed), then its bytes.
    pub async fn delete_file(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        if self.get_file_meta(tenant, id).await?.is_none() {
            return Ok(false);
        }
        self.inner
            .delete(&self.file_key(tenant, id, "meta.json")?)
            .await?;
        for key in [
            self.file_key(tenant, id, "content")?,
            self.file_index_key(id)?,
        ] {
            match self.inner.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Cheap check that the backend answers (for readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _ = self
            .inner
            .list_with_delimiter(Some(&self.key(&["tenants"])))
            .await?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UploadError {
    #[error("file is larger than the {0} bytes allowed")]
    TooLarge(u64),
    #[error("upload failed: {0}")]
    Body(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str) -> FileMeta {
        FileMeta {
            id: id.into(),
            tenant: "acme".into(),
            bytes: 3,
            created_at: 1,
            filename: "a.txt".into(),
            purpose: "assistants".into(),
            sha256: String::new(),
            run_id: None,
        }
    }

    #[tokio::test]
    async fn records_and_files_round_trip_in_a_local_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let rec = RunRecord {
            id: "run-1".into(),
            tenant: "acme".into(),
            stdout: "2\n".into(),
            ..Default::default()
        };
        store.put_run(&rec).await.unwrap();
        assert_eq!(store.get_run("acme", "run-1").await.unwrap(), Some(rec));
        assert_eq!(store.get_run("other", "run-1").await.unwrap(), None);

        store
            .put_file(&meta("file-1"), Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert_eq!(
            store.get_file_bytes("acme", "file-1").await.unwrap(),
            Bytes::from_static(b"abc")
        );
        assert_eq!(store.list_files("acme").await.unwrap().len(), 1);
        assert!(store.delete_file("acme", "file-1").await.unwrap());
        assert!(store.list_files("acme").await.unwrap().is_empty());
        assert!(!store.delete_file("acme", "file-1").await.unwrap());
    }

    #[tokio::test]
    async fn a_file_id_leads_to_its_tenant_until_the_file_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        store
            .put_file(&meta("file-2"), Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert_eq!(
            store.file_tenant("file-2").await.unwrap().as_deref(),
            Some("acme")
        );
        assert_eq!(store.file_tenant("file-none").await.unwrap(), None);
        assert_eq!(store.file_tenant("../etc").await.unwrap(), None);
        store.delete_file("acme", "file-2").await.unwrap();
        assert_eq!(store.file_tenant("file-2").await.unwrap(), None);
    }

    #[tokio::test]
    async fn files_stored_before_the_index_are_found_and_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        store
            .put_file(&meta("file-3"), Bytes::from_static(b"abc"))
            .await
            .unwrap();
        std::fs::remove_file(dir.path().join("index/files/file-3.json")).unwrap();
        assert_eq!(
            store.file_tenant("file-3").await.unwrap().as_deref(),
            Some("acme")
        );
        assert!(dir.path().join("index/files/file-3.json").exists());
    }

    #[tokio::test]
    async fn path_like_ids_are_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        assert!(matches!(
            store.get_run("acme", "../x").await,
            Err(StoreError::Name(_))
        ));
        assert_eq!(store.get_file_meta("acme", "a/b").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_streamed_upload_over_the_cap_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let chunks = futures::stream::iter(
            (0..3).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 10]))),
        )
        .boxed();
        let got = store
            .put_file_stream("acme", "file-x", chunks, 25)
            .await
            .unwrap();
        assert_eq!(got, Err(UploadError::TooLarge(25)));
        assert!(store.get_file_bytes("acme", "file-x").await.is_err());
    }
}
