//! A container's files, as object storage keeps them: each file's bytes are a stored file
//! like any other (`tenants/<tenant>/files/<id>/`, so a signed URL serves it), and the
//! container's folder is an index from path to file:
//! `tenants/<tenant>/containers/<container>/paths/<sha256 of the path>.json`, a
//! [`ContainerFile`]. An upload or a run that writes a path replaces its entry; removing the
//! path removes the entry (the bytes of a run's output stay, as that run's output file).
use futures::TryStreamExt;
use object_store::PutPayload;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::{Store, StoreError, segment};

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

impl Store {
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
