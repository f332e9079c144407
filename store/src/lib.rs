//! Where results live in object storage, and in what shape. The operator writes a run's
//! record, its output and its output files; the REST API binds the runs it creates to their
//! ids and serves them, also after the CodeRun is gone.
//!
//! Layout, under the store's root:
//! - `tenants/<tenant>/runs/<namespace>/<run uid>/record.json`: the final [`RunRecord`]
//!   (small: output previews, not the output), written last;
//! - `tenants/<tenant>/runs/<namespace>/<run uid>/stdout` and `.../stderr`: the program's
//!   output, byte for byte;
//! - `tenants/<tenant>/run-ids/<run id>.json`: a [`RunBinding`], written by the REST API when
//!   it creates a run: the UID (and namespace) it created under that id, so that no other
//!   CodeRun of the same name can answer for it;
//! - `tenants/<tenant>/run-index/<d0..10>/<d10..12>/<d12..14>/<d14..16>/<newest-first key>_<run id>`:
//!   one empty object per bound run, an ordered index (see `index.rs`) whose key order is
//!   newest first: a page reads names, not records, and seeks to its cursor, so it costs the
//!   same at a million runs as at a thousand (entries of the first index, flat under
//!   `run-index/`, are moved into the tree when a listing finds them);
//! - `tenants/<tenant>/files/<file id>/meta.json`: a [`FileMeta`];
//! - `tenants/<tenant>/file-index/all/<tree>/<newest-first key>_<file id>` and
//!   `.../file-index/purpose/<purpose>/<tree>/...`: the tenant's files in the same kind of
//!   ordered index, all of them and by purpose, written before a file's metadata and removed
//!   after it; `.../file-index/indexed` says files stored before the index are in it too;
//! - `tenants/<tenant>/files/<file id>/content`: the file's bytes;
//! - `index/files/<file id>.json`: a [`FileIndexEntry`] naming the file's tenant, so a signed
//!   download URL (which carries no bearer token) finds the file in one read, and a link to
//!   a deleted file misses in one;
//! - `tenants/<tenant>/containers/<container>/paths/<sha256 of a path>.json`: a
//!   [`ContainerFile`], which stored file is at that path of the container's folder;
//! - `tenants/<tenant>/containers/<container>/runs/<created>_<sequence>_<run id>.json`: a
//!   [`ContainerRun`], a run the REST API made in the container, named in the order made;
//! - `usage/<tenant>.json`: a [`Measured`], what the tenant stored at the last sweep (see
//!   [`Store::sweep_tenant`]), for its storage quota.
//!
//! Records of the first layout (`tenants/<tenant>/runs/<run id>.json`, output inline) are
//! still read: by id, and bound and indexed the first time a listing finds them.
#![forbid(unsafe_code)]

mod containers;
mod files;
mod index;
mod output;
mod runs;
mod usage;

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;

use index::Listing;

pub use containers::{CODE_HEAD_BYTES, ContainerFile, ContainerRun, ContainerRunPage, FileSource};
pub use files::{FileIndexEntry, FileMeta, FilePage, UPLOAD_PART_BYTES, UploadError, image_type};
pub use output::StoredOutput;
pub use runs::{
    HEAD_BYTES, OutputStream, RECORD_VERSION, RunBinding, RunError, RunPage, RunRecord, head,
};
pub use usage::{FileFate, Ledger, Measured, Quota, Retention, Swept, file_fate};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid STORAGE_URL {0:?}: {1}")]
    Url(String, String),
    /// The object is not stored (never was, or was deleted meanwhile). Callers answer it as
    /// the absence it is; they never need to look inside a backend error for it.
    #[error("no such object")]
    NotFound,
    #[error("object storage: {0}")]
    Backend(#[source] object_store::Error),
    #[error("stored object is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid name {0:?}")]
    Name(String),
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound,
            other => StoreError::Backend(other),
        }
    }
}

impl StoreError {
    /// An error that retrying cannot cure (a name storage refuses, a malformed object), as
    /// opposed to the backend being unavailable.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Name(_) | StoreError::Json(_) | StoreError::Url(..) => true,
            // Absence may be temporary: an object read before it is written.
            StoreError::NotFound => false,
            StoreError::Backend(e) => matches!(
                e,
                object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::PermissionDenied { .. }
            ),
        }
    }
}

/// A handle on the object store, cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    root: Path,
    /// How the backend's listings are read in order, for the indexes.
    listing: Listing,
    /// Parts of [`UPLOAD_PART_BYTES`] a streamed upload may hold in memory at once.
    upload_parts: usize,
}

/// Ids and tenants become path segments: allow only a safe alphabet.
pub(crate) fn segment(s: &str) -> Result<&str, StoreError> {
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
            // Directories emptied by a removal are removed with it, so that a walk of an
            // index never reads directories of entries long gone.
            let local = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| bad(e.to_string()))?
                .with_automatic_cleanup(true);
            return Ok(Store {
                inner: Arc::new(local),
                root: Path::default(),
                listing: Listing::Directories,
                upload_parts: 1,
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
            listing: Listing::Ordered,
            upload_parts: 1,
        })
    }

    /// A store on any backend (tests wrap one to count what a page reads).
    #[cfg(test)]
    pub(crate) fn on(inner: Arc<dyn ObjectStore>, listing: Listing) -> Self {
        Store {
            inner,
            root: Path::default(),
            listing,
            upload_parts: 1,
        }
    }

    /// The same store, whose streamed uploads hold up to `parts` parts of
    /// [`UPLOAD_PART_BYTES`] in memory: 1 (the default) reads no more of a stream while a
    /// part is being sent; more read on meanwhile, a part each.
    pub fn with_upload_parts(mut self, parts: usize) -> Self {
        self.upload_parts = parts.max(1);
        self
    }

    /// The most a streamed upload holds in memory: its parts, and the chunk being added.
    pub fn upload_held_bytes(&self, chunk_bytes: u64) -> u64 {
        UPLOAD_PART_BYTES * self.upload_parts as u64 + chunk_bytes
    }

    pub(crate) fn key(&self, parts: &[&str]) -> Path {
        let mut p = self.root.clone();
        for part in parts {
            p = p.child(*part);
        }
        p
    }

    /// Deletes an object that may be gone already.
    pub(crate) async fn delete_if_present(&self, key: &Path) -> Result<(), StoreError> {
        match self.inner.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
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
