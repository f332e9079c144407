//! A container's files, as object storage keeps them: each file's bytes are a stored file
//! like any other (`tenants/<tenant>/files/<id>/`, so a signed URL serves it), and the
//! container's folder is an index from path to file:
//! `tenants/<tenant>/containers/<container>/paths/<sha256 of the path>.json`, a
//! [`ContainerFile`]. An upload or a run that writes a path replaces its entry; removing the
//! path removes the entry (the bytes of a run's output stay, as that run's output file).
//!
//! The runs the REST API made in a container are indexed beside its folder, one
//! [`ContainerRun`] each: `tenants/<tenant>/containers/<container>/runs/<order key>.json`,
//! named so that key order is the order they were made in (a notebook's cells).
use futures::TryStreamExt;
use object_store::PutPayload;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::{Store, StoreError, head, segment};

/// Bytes of a run's code a container's index of runs keeps (cut at a character boundary).
pub const CODE_HEAD_BYTES: usize = 16 * 1024;

/// Who put a file in a container (OpenAI's `source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileSource {
    /// Uploaded (or copied from an uploaded file) through the API.
    User,
    /// Written by a program run in the container.
    Assistant,
}

/// A file in a container's folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerFile {
    /// The stored file holding its bytes.
    pub id: String,
    pub container: String,
    pub tenant: String,
    /// Relative to the container's folder (`/mnt/data`).
    pub path: String,
    pub bytes: u64,
    pub created_at: i64,
    pub source: FileSource,
}

/// A run made in a container, as the container's index of runs keeps it: enough to order
/// it and to show what it ran (the run itself is read by its id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRun {
    pub id: String,
    /// When its CodeRun was made, unix seconds.
    pub created_at: i64,
    /// Orders runs made in the same second: the CodeRun's `resourceVersion` when it was
    /// made, as the operator orders a container's waiting runs.
    pub sequence: u64,
    /// The first [`CODE_HEAD_BYTES`] of its code.
    pub code: String,
    pub code_truncated: bool,
}

impl ContainerRun {
    pub fn new(id: &str, created_at: i64, sequence: u64, code: &str) -> Self {
        let kept = head(code.as_bytes(), CODE_HEAD_BYTES);
        ContainerRun {
            id: id.to_string(),
            created_at,
            sequence,
            code_truncated: kept.len() < code.len(),
            code: kept,
        }
    }

    /// Zero-padded, so that names in key order are runs in the order they were made.
    fn key_name(&self) -> String {
        format!(
            "{:012}_{:020}_{}.json",
            self.created_at.max(0),
            self.sequence,
            self.id
        )
    }
}

/// The run id an index name ends with.
fn run_id_of(name: &str) -> Option<&str> {
    name.strip_suffix(".json")?.splitn(3, '_').nth(2)
}

/// One page of a container's runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRunPage {
    pub runs: Vec<ContainerRun>,
    pub has_more: bool,
}

impl Store {
    fn container_runs(&self, tenant: &str, container: &str) -> Result<Path, StoreError> {
        Ok(self.key(&[
            "tenants",
            segment(tenant)?,
            "containers",
            segment(container)?,
            "runs",
        ]))
    }

    /// Adds a run to the container's index of runs.
    pub async fn put_container_run(
        &self,
        tenant: &str,
        container: &str,
        run: &ContainerRun,
    ) -> Result<(), StoreError> {
        segment(&run.id)?;
        let key = self
            .container_runs(tenant, container)?
            .child(run.key_name());
        self.inner
            .put(&key, PutPayload::from(serde_json::to_vec(run)?))
            .await?;
        Ok(())
    }

    /// A page of the container's runs, oldest first (or newest first), after the run
    /// `after`; `None` when `after` is not one of them. Lists names, then reads only the
    /// page's entries.
    pub async fn list_container_runs(
        &self,
        tenant: &str,
        container: &str,
        after: Option<&str>,
        limit: usize,
        newest_first: bool,
    ) -> Result<Option<ContainerRunPage>, StoreError> {
        let prefix = self.container_runs(tenant, container)?;
        let mut entries: Vec<Path> = self
            .inner
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        entries.sort_by(|a, b| a.filename().cmp(&b.filename()));
        if newest_first {
            entries.reverse();
        }
        let start = match after {
            None => 0,
            Some(id) => {
                let Some(i) = entries
                    .iter()
                    .position(|p| p.filename().and_then(run_id_of) == Some(id))
                else {
                    return Ok(None);
                };
                i + 1
            }
        };
        let has_more = entries.len() > start + limit;
        let mut runs = Vec::with_capacity(limit.min(entries.len()));
        for key in entries.iter().skip(start).take(limit) {
            match self.inner.get(key).await {
                Ok(r) => runs.push(serde_json::from_slice(&r.bytes().await?)?),
                // Forgotten between the listing and the read.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(ContainerRunPage { runs, has_more }))
    }

    /// Forgets the container's index of runs (the runs themselves stay the tenant's).
    pub async fn forget_container_runs(
        &self,
        tenant: &str,
        container: &str,
    ) -> Result<(), StoreError> {
        let prefix = self.container_runs(tenant, container)?;
        let keys: Vec<Path> = self
            .inner
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        for key in keys {
            self.delete_if_present(&key).await?;
        }
        Ok(())
    }

    fn container_paths(&self, tenant: &str, container: &str) -> Result<Path, StoreError> {
        Ok(self.key(&[
            "tenants",
            segment(tenant)?,
            "containers",
            segment(container)?,
            "paths",
        ]))
    }

    fn container_path_key(
        &self,
        tenant: &str,
        container: &str,
        path: &str,
    ) -> Result<Path, StoreError> {
        let name = format!("{}.json", hex::encode(sha2::Sha256::digest(path)));
        Ok(self.container_paths(tenant, container)?.child(name))
    }

    /// Puts the file at its path in the container's folder (replacing what was there).
    pub async fn put_container_file(&self, file: &ContainerFile) -> Result<(), StoreError> {
        let key = self.container_path_key(&file.tenant, &file.container, &file.path)?;
        self.inner
            .put(&key, PutPayload::from(serde_json::to_vec(file)?))
            .await?;
        Ok(())
    }

    /// The file at `path` in the container's folder.
    pub async fn container_file(
        &self,
        tenant: &str,
        container: &str,
        path: &str,
    ) -> Result<Option<ContainerFile>, StoreError> {
        let key = self.container_path_key(tenant, container, path)?;
        match self.inner.get(&key).await {
            Ok(r) => Ok(Some(serde_json::from_slice(&r.bytes().await?)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every file of the container's folder, by path.
    pub async fn list_container_files(
        &self,
        tenant: &str,
        container: &str,
    ) -> Result<Vec<ContainerFile>, StoreError> {
        let prefix = self.container_paths(tenant, container)?;
        let entries: Vec<_> = self.inner.list(Some(&prefix)).try_collect().await?;
        let mut files = Vec::with_capacity(entries.len());
        for entry in entries {
            match self.inner.get(&entry.location).await {
                Ok(r) => files.push(serde_json::from_slice::<ContainerFile>(&r.bytes().await?)?),
                // Removed between the listing and the read.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// The container's file with this id, if it is still in its folder.
    pub async fn container_file_by_id(
        &self,
        tenant: &str,
        container: &str,
        id: &str,
    ) -> Result<Option<ContainerFile>, StoreError> {
        Ok(self
            .list_container_files(tenant, container)
            .await?
            .into_iter()
            .find(|f| f.id == id))
    }

    /// Takes the path out of the container's folder; false if it was not there.
    pub async fn remove_container_file(
        &self,
        tenant: &str,
        container: &str,
        path: &str,
    ) -> Result<bool, StoreError> {
        let key = self.container_path_key(tenant, container, path)?;
        match self.inner.delete(&key).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, id: &str) -> ContainerFile {
        ContainerFile {
            id: id.into(),
            container: "cntr-1".into(),
            tenant: "acme".into(),
            path: path.into(),
            bytes: 3,
            created_at: 1,
            source: FileSource::User,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        (dir, store)
    }

    async fn page(store: &Store, after: Option<&str>, limit: usize, newest: bool) -> Vec<String> {
        let page = store
            .list_container_runs("acme", "cntr-1", after, limit, newest)
            .await
            .unwrap()
            .unwrap();
        page.runs.into_iter().map(|r| r.id).collect()
    }

    #[tokio::test]
    async fn a_containers_runs_are_listed_in_the_order_they_were_made() {
        let (_dir, store) = store();
        // Made in this order: the second and third in the same second, told apart by their
        // resourceVersion; ids that sort the other way round.
        let made = [
            ContainerRun::new("run-z", 9, 100, "x = 41"),
            ContainerRun::new("run-y", 10, 205, "x += 1"),
            ContainerRun::new("run-x", 10, 1_000, "print(x)"),
        ];
        for run in made.iter().rev() {
            store
                .put_container_run("acme", "cntr-1", run)
                .await
                .unwrap();
        }
        assert_eq!(
            page(&store, None, 20, false).await,
            ["run-z", "run-y", "run-x"]
        );
        assert_eq!(
            page(&store, None, 20, true).await,
            ["run-x", "run-y", "run-z"]
        );
        let first = store
            .list_container_runs("acme", "cntr-1", None, 20, false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.runs[0], made[0]);
        assert!(
            store
                .list_container_runs("acme", "cntr-2", None, 20, false)
                .await
                .unwrap()
                .unwrap()
                .runs
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_containers_runs_are_paged_after_a_run_id() {
        let (_dir, store) = store();
        for i in 0..5 {
            let run = ContainerRun::new(&format!("run-{i}"), 100 + i, 7, "pass");
            store
                .put_container_run("acme", "cntr-1", &run)
                .await
                .unwrap();
        }
        let first = store
            .list_container_runs("acme", "cntr-1", None, 2, false)
            .await
            .unwrap()
            .unwrap();
        assert!(first.has_more);
        assert_eq!(
            page(&store, Some("run-1"), 2, false).await,
            ["run-2", "run-3"]
        );
        let last = store
            .list_container_runs("acme", "cntr-1", Some("run-3"), 2, false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((last.runs.len(), last.has_more), (1, false));
        assert_eq!(
            page(&store, Some("run-3"), 2, true).await,
            ["run-2", "run-1"]
        );
        assert!(
            store
                .list_container_runs("acme", "cntr-1", Some("run-9"), 2, false)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_forgotten_containers_runs_are_no_longer_listed_and_long_code_is_cut() {
        let (_dir, store) = store();
        let long = "é".repeat(CODE_HEAD_BYTES);
        let run = ContainerRun::new("run-a", 1, 1, &long);
        assert!(run.code_truncated && run.code.len() <= CODE_HEAD_BYTES);
        assert!(run.code.chars().all(|c| c == 'é'));
        assert!(!ContainerRun::new("run-b", 1, 2, "short").code_truncated);
        store
            .put_container_run("acme", "cntr-1", &run)
            .await
            .unwrap();
        store.forget_container_runs("acme", "cntr-1").await.unwrap();
        assert!(page(&store, None, 20, false).await.is_empty());
        let bad = ContainerRun::new("../x", 1, 1, "");
        assert!(
            store
                .put_container_run("acme", "cntr-1", &bad)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_containers_folder_maps_each_path_to_its_latest_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        store
            .put_container_file(&file("data/in.csv", "f1"))
            .await
            .unwrap();
        store
            .put_container_file(&file("out.png", "f2"))
            .await
            .unwrap();
        store
            .put_container_file(&file("data/in.csv", "f3"))
            .await
            .unwrap();
        let all = store.list_container_files("acme", "cntr-1").await.unwrap();
        let ids: Vec<&str> = all.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["f3", "f2"]);
        assert!(
            store
                .container_file_by_id("acme", "cntr-1", "f1")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .remove_container_file("acme", "cntr-1", "out.png")
                .await
                .unwrap()
        );
        assert!(
            !store
                .remove_container_file("acme", "cntr-1", "out.png")
                .await
                .unwrap()
        );
        assert!(
            store
                .list_container_files("acme", "other")
                .await
                .unwrap()
                .is_empty()
        );
        let odd = "a path with spaces/../and dots/ünïcode.txt";
        store.put_container_file(&file(odd, "f4")).await.unwrap();
        assert_eq!(
            store
                .container_file("acme", "cntr-1", odd)
                .await
                .unwrap()
                .unwrap()
                .id,
            "f4"
        );
    }
}
