//! Files: uploaded through `/v1/files`, or written by a run.
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::PutPayload;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::index::{entry_id, entry_name, entry_path, take_page};
use crate::runs::newest_first;
use crate::{Store, StoreError, segment};

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
    /// An image type, when the file's bytes are an image (see [`image_type`]); anything
    /// else is served as bytes to download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// The image type of a file, judged from its bytes (never its name): PNG, JPEG, GIF, WebP, or
/// SVG. Only these are ever served for display; an SVG is served under a policy that runs no
/// script.
pub fn image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some("image/png");
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some("image/jpeg");
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        return Some("image/gif");
    }
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Some("image/webp");
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    let text = text.trim_start_matches('\u{feff}').trim_start();
    if (text.starts_with("<svg") || text.starts_with("<?xml")) && text.contains("<svg") {
        return Some("image/svg+xml");
    }
    None
}

/// The size of the parts a streamed upload is sent in: S3's smallest (a part is held in
/// memory until it is whole).
pub const UPLOAD_PART_BYTES: u64 = 5 * 1024 * 1024;

/// One page of a tenant's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePage {
    pub files: Vec<FileMeta>,
    pub has_more: bool,
}

/// A file's name in the tenant's file indexes: newest first, by id within a second.
fn file_entry_name(meta: &FileMeta) -> String {
    entry_name(newest_first(meta.created_at.saturating_mul(1000)), &meta.id)
}

/// Where a file id lives: written with every file's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIndexEntry {
    pub tenant: String,
}

impl Store {
    pub(crate) fn file_key(&self, tenant: &str, id: &str, leaf: &str) -> Result<Path, StoreError> {
        Ok(self.key(&["tenants", segment(tenant)?, "files", segment(id)?, leaf]))
    }

    fn file_index_key(&self, id: &str) -> Result<Path, StoreError> {
        Ok(self.key(&["index", "files", &format!("{}.json", segment(id)?)]))
    }

    /// Stores a file whose bytes are all at hand (run outputs; they are small).
    pub async fn put_file(&self, meta: &FileMeta, content: Bytes) -> Result<(), StoreError> {
        let content_key = self.file_key(&meta.tenant, &meta.id, "content")?;
        self.inner
            .put(&content_key, PutPayload::from(content))
            .await?;
        self.put_file_meta(meta).await
    }

    /// Stores a file's bytes from a stream, without holding it all in memory (a part of
    /// [`UPLOAD_PART_BYTES`] at a time, or as many as [`Store::with_upload_parts`] allows), and
    /// returns its size and sha256. The caller writes the metadata afterwards (so a file is listed
    /// only once its bytes are all there) and may refuse it by size as it streams.
    pub async fn put_file_stream<E>(
        &self,
        tenant: &str,
        id: &str,
        mut chunks: BoxStream<'_, Result<Bytes, E>>,
        max_bytes: u64,
    ) -> Result<Result<(u64, String), UploadError<E>>, StoreError> {
        use sha2::Digest;
        let key = self.file_key(tenant, id, "content")?;
        let mut upload = object_store::WriteMultipart::new_with_chunk_size(
            self.inner.put_multipart(&key).await?,
            UPLOAD_PART_BYTES as usize,
        );
        let mut size = 0u64;
        let mut hash = sha2::Sha256::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    upload.abort().await?;
                    return Ok(Err(UploadError::Body(e)));
                }
            };
            size += chunk.len() as u64;
            if size > max_bytes {
                upload.abort().await?;
                return Ok(Err(UploadError::TooLarge(max_bytes)));
            }
            hash.update(&chunk);
            // With one part allowed, no more is read while a full part is being sent.
            upload.wait_for_capacity(self.upload_parts).await?;
            upload.write(&chunk);
        }
        upload.finish().await?;
        Ok(Ok((size, hex::encode(hash.finalize()))))
    }

    /// Writes a file's metadata, after its index entries: a listed file can always be found
    /// by its id alone.
    pub async fn put_file_meta(&self, meta: &FileMeta) -> Result<(), StoreError> {
        let key = self.file_key(&meta.tenant, &meta.id, "meta.json")?;
        self.put_file_index(&meta.id, &meta.tenant).await?;
        for entry in self.file_list_entries(meta)? {
            self.inner.put(&entry, PutPayload::new()).await?;
        }
        self.inner
            .put(&key, PutPayload::from(serde_json::to_vec(meta)?))
            .await?;
        Ok(())
    }

    /// The tenant's file indexes: all its files, or those of one purpose.
    fn file_list_prefix(&self, tenant: &str, purpose: Option<&str>) -> Result<Path, StoreError> {
        let index = self.key(&["tenants", segment(tenant)?, "file-index"]);
        Ok(match purpose {
            None => index.child("all"),
            Some(p) => index.child("purpose").child(segment(p)?),
        })
    }

    /// A file's entries in the tenant's file indexes (none by purpose for a purpose that
    /// cannot be a name; no such purpose is accepted).
    fn file_list_entries(&self, meta: &FileMeta) -> Result<Vec<Path>, StoreError> {
        let name = file_entry_name(meta);
        let mut entries = vec![entry_path(
            &self.file_list_prefix(&meta.tenant, None)?,
            &name,
        )];
        if let Ok(by_purpose) = self.file_list_prefix(&meta.tenant, Some(&meta.purpose)) {
            entries.push(entry_path(&by_purpose, &name));
        }
        Ok(entries)
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
    /// URLs): one read of the file's index entry, found or not. Every file is indexed when
    /// its metadata is written, so an id without an entry is no file (deleted, or never
    /// made): a miss costs that one read, however many tenants there are.
    pub async fn file_tenant(&self, id: &str) -> Result<Option<String>, StoreError> {
        let key = match self.file_index_key(id) {
            Ok(k) => k,
            Err(StoreError::Name(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match self.inner.get(&key).await {
            Ok(r) => {
                let entry: FileIndexEntry = serde_json::from_slice(&r.bytes().await?)?;
                Ok(Some(entry.tenant))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
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

    /// A file's bytes as a stream (for downloads); [`StoreError::NotFound`] when its bytes
    /// are gone (deleted since its metadata was read).
    pub async fn get_file_content(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let key = self.file_key(tenant, id, "content")?;
        let stream = self.inner.get(&key).await?.into_stream();
        Ok(stream.map_err(StoreError::from).boxed())
    }

    /// A file's bytes at once (for run inputs, which are small).
    pub async fn get_file_bytes(&self, tenant: &str, id: &str) -> Result<Bytes, StoreError> {
        let key = self.file_key(tenant, id, "content")?;
        Ok(self.inner.get(&key).await?.bytes().await?)
    }

    /// A page of the tenant's files (of one purpose, or all), after the file `after`:
    /// newest first, reading only the names and metadata the page takes, so its cost does
    /// not grow with the tenant's files; oldest first (`newest_first` false) reads every
    /// name of the index (no metadata but the page's). `None` when `after` is not one of
    /// the files listed.
    pub async fn list_files_page(
        &self,
        tenant: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: usize,
        newest_first: bool,
    ) -> Result<Option<FilePage>, StoreError> {
        self.index_earlier_files(tenant).await?;
        let prefix = match self.file_list_prefix(tenant, purpose) {
            Ok(p) => p,
            Err(StoreError::Name(_)) if after.is_none() => {
                return Ok(Some(FilePage {
                    files: vec![],
                    has_more: false,
                }));
            }
            Err(StoreError::Name(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let after = match after {
            None => None,
            Some(id) => match self.get_file_meta(tenant, id).await? {
                Some(m) if purpose.is_none_or(|p| m.purpose == p) => Some(file_entry_name(&m)),
                _ => return Ok(None),
            },
        };
        let read = |name: String| async move {
            let Some(id) = entry_id(&name) else {
                return Ok(None);
            };
            // An entry outlives its file for a moment when the file is deleted, and is
            // written a moment before a new file's metadata.
            Ok(self
                .get_file_meta(tenant, id)
                .await?
                .filter(|m| file_entry_name(m) == name))
        };
        let (files, has_more) = if newest_first {
            let names = self.index_names(&prefix, after.as_deref()).await?;
            take_page(names, limit, read).await?
        } else {
            let mut names: Vec<String> =
                self.index_names(&prefix, None).await?.try_collect().await?;
            names.reverse();
            let start = match &after {
                None => 0,
                Some(a) => names
                    .iter()
                    .position(|n| n == a)
                    .map_or(names.len(), |i| i + 1),
            };
            let rest = futures::stream::iter(names.into_iter().skip(start).map(Ok)).boxed();
            take_page(rest, limit, read).await?
        };
        Ok(Some(FilePage { files, has_more }))
    }

    /// Files stored before the file indexes were are indexed once, by the first listing
    /// (which reads each one's metadata); `file-index/indexed` says it is done.
    async fn index_earlier_files(&self, tenant: &str) -> Result<(), StoreError> {
        let done = self.key(&["tenants", segment(tenant)?, "file-index", "indexed"]);
        match self.inner.head(&done).await {
            Ok(_) => return Ok(()),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let files = self.key(&["tenants", segment(tenant)?, "files"]);
        let mut listing = self.inner.list(Some(&files));
        while let Some(object) = listing.try_next().await? {
            if object.location.filename() != Some("meta.json") {
                continue;
            }
            let meta: FileMeta = match self.inner.get(&object.location).await {
                Ok(r) => serde_json::from_slice(&r.bytes().await?)?,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            for entry in self.file_list_entries(&meta)? {
                self.inner.put(&entry, PutPayload::new()).await?;
            }
        }
        self.inner.put(&done, PutPayload::new()).await?;
        Ok(())
    }

    /// Deletes a file's metadata first (so it stops being listed), then its bytes; the
    /// metadata of the file deleted, if there was one.
    pub async fn delete_file(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<FileMeta>, StoreError> {
        let Some(meta) = self.get_file_meta(tenant, id).await? else {
            return Ok(None);
        };
        self.remove_file(tenant, id, Some(&meta)).await?;
        Ok(Some(meta))
    }

    /// Removes whatever is left of a file: its metadata, its entries in the tenant's file
    /// indexes (when its metadata was read: a sweep removes entries by their own age), its
    /// bytes, its index entry, in that order, each gone already or not (so two sweepers, or
    /// a sweeper and a client, may remove the same file at once).
    pub(crate) async fn remove_file(
        &self,
        tenant: &str,
        id: &str,
        meta: Option<&FileMeta>,
    ) -> Result<(), StoreError> {
        let mut keys = vec![self.file_key(tenant, id, "meta.json")?];
        if let Some(meta) = meta {
            keys.extend(self.file_list_entries(meta)?);
        }
        keys.push(self.file_key(tenant, id, "content")?);
        keys.push(self.file_index_key(id)?);
        for key in keys {
            self.delete_if_present(&key).await?;
        }
        Ok(())
    }
}

/// Why a streamed upload was refused: over the size cap, or the body failed with the
/// caller's own error (kept as it is, so the caller can tell its kinds apart).
#[derive(Debug, PartialEq, Eq)]
pub enum UploadError<E> {
    TooLarge(u64),
    Body(E),
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
            content_type: None,
        }
    }

    #[tokio::test]
    async fn files_round_trip_in_a_local_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        store
            .put_file(&meta("file-1"), Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert_eq!(
            store.get_file_bytes("acme", "file-1").await.unwrap(),
            Bytes::from_static(b"abc")
        );
        let listed = |store: Store| async move {
            let page = store.list_files_page("acme", None, None, 20, true).await;
            page.unwrap().unwrap().files.len()
        };
        assert_eq!(listed(store.clone()).await, 1);
        assert!(store.delete_file("acme", "file-1").await.unwrap().is_some());
        assert_eq!(listed(store.clone()).await, 0);
        assert!(store.delete_file("acme", "file-1").await.unwrap().is_none());
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
    async fn an_id_without_an_index_entry_is_no_file_whatever_the_tenants_hold() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        store
            .put_file(&meta("file-3"), Bytes::from_static(b"abc"))
            .await
            .unwrap();
        // A miss reads the index entry and nothing else: not the tenants' files.
        std::fs::remove_file(dir.path().join("index/files/file-3.json")).unwrap();
        assert_eq!(store.file_tenant("file-3").await.unwrap(), None);
        assert!(!dir.path().join("index/files/file-3.json").exists());
    }

    #[tokio::test]
    async fn the_bytes_of_a_deleted_file_are_not_found_not_a_backend_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        store
            .put_file(&meta("file-4"), Bytes::from_static(b"abc"))
            .await
            .unwrap();
        let bytes: Vec<Bytes> = store
            .get_file_content("acme", "file-4")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(bytes.concat(), b"abc");
        store.delete_file("acme", "file-4").await.unwrap();
        assert!(matches!(
            store.get_file_content("acme", "file-4").await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.get_file_bytes("acme", "file-4").await,
            Err(StoreError::NotFound)
        ));
    }

    #[tokio::test]
    async fn path_like_file_ids_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(store.get_file_meta("acme", "a/b").await.unwrap(), None);
    }

    #[test]
    fn images_are_told_by_their_bytes_not_their_names() {
        assert_eq!(image_type(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(image_type(b"\xff\xd8\xff\xe0"), Some("image/jpeg"));
        assert_eq!(image_type(b"GIF89a.."), Some("image/gif"));
        assert_eq!(image_type(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(
            image_type(b"<?xml version=\"1.0\"?>\n<svg xmlns=\"x\"/>"),
            Some("image/svg+xml")
        );
        assert_eq!(image_type(b"<html><script>alert(1)</script>"), None);
        assert_eq!(image_type(b"<!doctype html><svg>"), None);
        assert_eq!(image_type(b"plain text"), None);
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
            .put_file_stream::<std::io::Error>("acme", "file-x", chunks, 25)
            .await
            .unwrap()
            .map_err(|e| match e {
                UploadError::TooLarge(n) => UploadError::TooLarge(n),
                UploadError::Body(e) => UploadError::Body(e.to_string()),
            });
        assert_eq!(got, Err(UploadError::TooLarge(25)));
        assert!(store.get_file_bytes("acme", "file-x").await.is_err());
    }
}
