//! What each tenant keeps in storage, and for how long. A sweep lists one tenant's objects
//! once (names, sizes and ages: no object is read), removes those older than the retention
//! settings and adds up the rest; the sum is the tenant's usage, kept at
//! `usage/<tenant>.json` for the operator. Between sweeps a [`Ledger`] adds what was written
//! or removed since, so a quota is checked against a figure that is at most one sweep old
//! plus what this process itself did.
//!
//! Every removal is of objects that may already be gone, so sweepers on several replicas
//! (or a sweeper and a client deleting the same file) never fail one another.
use std::collections::HashMap;
use std::sync::Mutex;

use futures::TryStreamExt;
use object_store::PutPayload;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::{Store, StoreError, segment};

/// A tenant's stored bytes, as a sweep that started at `measured_at` counted them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measured {
    pub bytes: u64,
    pub measured_at: i64,
}

/// What a sweep removes: objects last written before these times (unix seconds); `None`
/// keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Files (uploads and output files): judged by their metadata, written last.
    pub files_before: Option<i64>,
    /// Run records, their output, bindings and index entries: each by its own age.
    pub runs_before: Option<i64>,
}

/// What a sweep of one tenant found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// What the tenant still stores.
    pub bytes: u64,
    pub files_removed: u64,
    pub run_objects_removed: u64,
}

/// What becomes of one file, from the ages of its metadata and its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFate {
    Keep,
    Remove,
    /// Bytes with no metadata beside them in the listing, older than the retention: an
    /// upload refused long ago whose bytes were left behind (or metadata the listing gave
    /// elsewhere: it is looked up before anything is removed).
    RemoveUnlessMeta,
}

/// The fate of a file whose metadata and bytes were last written at these times.
pub fn file_fate(meta: Option<i64>, content: Option<i64>, before: Option<i64>) -> FileFate {
    let Some(before) = before else {
        return FileFate::Keep;
    };
    match (meta, content) {
        (Some(meta), _) if meta < before => FileFate::Remove,
        (Some(_), _) => FileFate::Keep,
        // An upload in progress has bytes and no metadata yet: it is young.
        (None, Some(content)) if content < before => FileFate::RemoveUnlessMeta,
        (None, _) => FileFate::Keep,
    }
}

/// Where an object under a tenant's prefix belongs, from the rest of its path.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    File {
        id: String,
        meta: bool,
        content: bool,
    },
    Run,
    /// An entry of the tenant's file indexes: written just before its file's metadata, so
    /// as old as the file, and removed by that age (also when its file is gone already).
    FileListEntry,
    Other,
}

fn kind(rest: &[String]) -> Kind {
    match rest {
        [files, id, leaf] if files == "files" => Kind::File {
            id: id.clone(),
            meta: leaf == "meta.json",
            content: leaf == "content",
        },
        [first, ..] if matches!(first.as_str(), "runs" | "run-ids" | "run-index") => Kind::Run,
        // Not `file-index/indexed`, which says the indexes are whole.
        [first, _, _, ..] if first == "file-index" => Kind::FileListEntry,
        _ => Kind::Other,
    }
}

/// The objects of one file id, as the listing gave them (one after the other).
#[derive(Debug)]
struct FileGroup {
    id: String,
    meta: Option<i64>,
    content: Option<i64>,
    bytes: u64,
}

impl Store {
    fn usage_key(&self, tenant: &str) -> Result<Path, StoreError> {
        Ok(self.key(&["usage", &format!("{}.json", segment(tenant)?)]))
    }

    /// Every tenant that stores anything.
    pub async fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let listing = self
            .inner
            .list_with_delimiter(Some(&self.key(&["tenants"])))
            .await?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename())
            .filter(|t| segment(t).is_ok())
            .map(str::to_string)
            .collect())
    }

    /// Removes what of the tenant's is past `retention` and returns what it still stores.
    /// Memory stays that of one object whatever the tenant holds.
    pub async fn sweep_tenant(
        &self,
        tenant: &str,
        retention: &Retention,
    ) -> Result<Swept, StoreError> {
        let prefix = self.key(&["tenants", segment(tenant)?]);
        let mut listing = self.inner.list(Some(&prefix));
        let mut swept = Swept::default();
        let mut group: Option<FileGroup> = None;
        while let Some(object) = listing.try_next().await? {
            let rest: Vec<String> = object
                .location
                .prefix_match(&prefix)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
                .unwrap_or_default();
            let modified = object.last_modified.timestamp();
            match kind(&rest) {
                Kind::File { id, meta, content } => {
                    if let Some(done) = group.take_if(|g| g.id != id) {
                        self.settle(tenant, done, retention, &mut swept).await?;
                    }
                    let g = group.get_or_insert(FileGroup {
                        id,
                        meta: None,
                        content: None,
                        bytes: 0,
                    });
                    g.bytes += object.size;
                    if meta {
                        g.meta = Some(modified);
                    } else if content {
                        g.content = Some(modified);
                    }
                }
                Kind::Run if retention.runs_before.is_some_and(|b| modified < b) => {
                    self.delete_if_present(&object.location).await?;
                    swept.run_objects_removed += 1;
                }
                Kind::FileListEntry if retention.files_before.is_some_and(|b| modified < b) => {
                    self.delete_if_present(&object.location).await?;
                }
                Kind::Run | Kind::FileListEntry | Kind::Other => swept.bytes += object.size,
            }
        }
        if let Some(done) = group {
            self.settle(tenant, done, retention, &mut swept).await?;
        }
        Ok(swept)
    }

    /// Removes one file, or counts it.
    async fn settle(
        &self,
        tenant: &str,
        group: FileGroup,
        retention: &Retention,
        swept: &mut Swept,
    ) -> Result<(), StoreError> {
        let before = retention.files_before;
        let mut fate = file_fate(group.meta, group.content, before);
        if fate == FileFate::RemoveUnlessMeta {
            let meta = self.file_key(tenant, &group.id, "meta.json")?;
            fate = match self.inner.head(&meta).await {
                Ok(m) => file_fate(Some(m.last_modified.timestamp()), group.content, before),
                Err(object_store::Error::NotFound { .. }) => FileFate::Remove,
                Err(e) => return Err(e.into()),
            };
        }
        match fate {
            FileFate::Remove => {
                self.remove_file(tenant, &group.id, None).await?;
                swept.files_removed += 1;
            }
            FileFate::Keep | FileFate::RemoveUnlessMeta => swept.bytes += group.bytes,
        }
        Ok(())
    }

    /// Keeps a sweep's figure for the tenant where the operator reads it.
    pub async fn put_usage(&self, tenant: &str, measured: &Measured) -> Result<(), StoreError> {
        let body = PutPayload::from(serde_json::to_vec(measured)?);
        self.inner.put(&self.usage_key(tenant)?, body).await?;
        Ok(())
    }

    /// The tenant's usage as the last sweep measured it, if one has.
    pub async fn usage(&self, tenant: &str) -> Result<Option<Measured>, StoreError> {
        match self.inner.get(&self.usage_key(tenant)?).await {
            Ok(r) => Ok(Some(serde_json::from_slice(&r.bytes().await?)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// A tenant's stored bytes: the last measure, plus what was written (or removed) since,
/// second by second. A change in the second a sweep started may be counted twice: a quota
/// then errs on the safe side until the next sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    measured: u64,
    measured_at: i64,
    since: Vec<(i64, i64)>,
}

impl Ledger {
    /// `delta` bytes written (or removed, negative) at `at`.
    pub fn record(&mut self, at: i64, delta: i64) {
        match self.since.last_mut() {
            Some((second, sum)) if *second == at => *sum += delta,
            _ => self.since.push((at, delta)),
        }
    }

    /// A sweep that started at `at` counted `bytes`: what happened before it is in them. An
    /// older measure than the one held changes nothing. Whether the figure changed.
    pub fn measure(&mut self, bytes: u64, at: i64) -> bool {
        if at < self.measured_at {
            return false;
        }
        let changed = bytes != self.measured;
        self.measured = bytes;
        self.measured_at = at;
        self.since.retain(|(second, _)| *second >= at);
        changed
    }

    pub fn bytes(&self) -> u64 {
        let since: i64 = self.since.iter().map(|(_, d)| d).sum();
        self.measured.saturating_add_signed(since)
    }
}

/// Every tenant's [`Ledger`] against one quota (`None`: no quota).
#[derive(Debug, Default)]
pub struct Quota {
    limit: Option<u64>,
    ledgers: Mutex<HashMap<String, Ledger>>,
}

impl Quota {
    pub fn new(limit: Option<u64>) -> Self {
        Quota {
            limit,
            ledgers: Mutex::default(),
        }
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    fn with<T>(&self, tenant: &str, f: impl FnOnce(&mut Ledger) -> T) -> T {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|e| e.into_inner());
        f(ledgers.entry(tenant.to_string()).or_default())
    }

    pub fn record(&self, tenant: &str, at: i64, delta: i64) {
        if self.limit.is_some() {
            self.with(tenant, |l| l.record(at, delta));
        }
    }

    /// Takes a sweep's figure; whether it differs from the last one (a tenant that stores
    /// nothing and never did is not kept at all).
    pub fn measure(&self, tenant: &str, measured: Measured) -> bool {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|e| e.into_inner());
        match ledgers.get_mut(tenant) {
            Some(ledger) => ledger.measure(measured.bytes, measured.measured_at),
            None if measured.bytes == 0 => false,
            None => ledgers
                .entry(tenant.to_string())
                .or_default()
                .measure(measured.bytes, measured.measured_at),
        }
    }

    /// What the tenant stores, as far as this process knows.
    pub fn used(&self, tenant: &str) -> u64 {
        self.with(tenant, |l| l.bytes())
    }

    /// The bytes the tenant may still store; `None` without a quota.
    pub fn room(&self, tenant: &str) -> Option<u64> {
        let limit = self.limit?;
        Some(limit.saturating_sub(self.used(tenant)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_file_goes_by_the_age_of_its_metadata_and_bytes_alone_only_long_after() {
        use FileFate::*;
        let before = Some(100);
        let cases = [
            // (meta, content, fate)
            (Some(50), Some(40), Remove),
            (Some(150), Some(40), Keep),
            (Some(50), None, Remove),
            (None, Some(40), RemoveUnlessMeta),
            // An upload in progress.
            (None, Some(150), Keep),
            (None, None, Keep),
        ];
        for (meta, content, want) in cases {
            assert_eq!(
                file_fate(meta, content, before),
                want,
                "{meta:?} {content:?}"
            );
            assert_eq!(
                file_fate(meta, content, None),
                Keep,
                "no retention keeps all"
            );
        }
    }

    #[test]
    fn objects_are_told_apart_by_where_they_live() {
        let parts = |s: &str| s.split('/').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            kind(&parts("files/file-1/meta.json")),
            Kind::File {
                id: "file-1".into(),
                meta: true,
                content: false
            }
        );
        for run in [
            "runs/ns/uid/record.json",
            "runs/run-x.json",
            "run-ids/run-x.json",
            "run-index/0001_run-x",
        ] {
            assert_eq!(kind(&parts(run)), Kind::Run, "{run}");
        }
        for entry in [
            "file-index/all/9223370312/12/34/56/9223370312123456789_file-1",
            "file-index/purpose/assistants/9223370312/12/34/56/9223370312123456789_file-1",
        ] {
            assert_eq!(kind(&parts(entry)), Kind::FileListEntry, "{entry}");
        }
        assert_eq!(kind(&parts("file-index/indexed")), Kind::Other);
        assert_eq!(kind(&parts("containers/c/paths/x.json")), Kind::Other);
        assert_eq!(kind(&parts("files/odd")), Kind::Other);
    }

    #[test]
    fn a_ledger_adds_what_happened_since_the_last_measure_and_no_more() {
        let mut l = Ledger::default();
        l.record(10, 100);
        l.record(10, 50);
        l.record(20, -30);
        assert_eq!(l.bytes(), 120);
        // A sweep that started at 15 saw the first writes, not the removal.
        assert!(l.measure(1000, 15));
        assert_eq!(l.bytes(), 970);
        // An older sweep finishing late changes nothing.
        assert!(!l.measure(5, 12));
        assert_eq!(l.bytes(), 970);
        assert!(l.measure(900, 20));
        assert_eq!(
            l.bytes(),
            870,
            "a change in the sweep's own second counts twice"
        );
        assert!(!l.measure(900, 25), "the same figure again");
        l.record(30, -10_000);
        assert_eq!(l.bytes(), 0);
    }

    #[test]
    fn room_is_what_the_quota_leaves() {
        let q = Quota::new(Some(1000));
        q.record("a", 1, 400);
        assert_eq!(q.room("a"), Some(600));
        assert_eq!(q.room("b"), Some(1000));
        q.record("a", 2, 700);
        assert_eq!(q.room("a"), Some(0));
        assert_eq!(Quota::new(None).room("a"), None);
        let measured = |bytes| Measured {
            bytes,
            measured_at: 5,
        };
        assert!(!q.measure("empty", measured(0)), "nothing to keep");
        assert!(!q.ledgers.lock().unwrap().contains_key("empty"));
        assert!(q.measure("a", measured(10)));
        assert!(!q.measure("a", measured(10)));
    }

    fn meta(id: &str) -> crate::FileMeta {
        crate::FileMeta {
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

    fn unix_now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// Sets an object's age on a local store (its file's modification time).
    fn age(dir: &std::path::Path, rel: &str, days: u64) {
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86_400);
        let f = std::fs::File::options()
            .append(true)
            .open(dir.join(rel))
            .unwrap();
        f.set_modified(when).unwrap();
    }

    #[tokio::test]
    async fn a_sweep_removes_what_is_past_retention_counts_the_rest_and_may_run_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        for id in ["file-old", "file-new"] {
            store
                .put_file(&meta(id), Bytes::from_static(b"abc"))
                .await
                .unwrap();
        }
        let old_run = "tenants/acme/runs/ns/uid-old/record.json";
        let new_run = "tenants/acme/runs/ns/uid-new/record.json";
        for rel in [old_run, new_run] {
            std::fs::create_dir_all(dir.path().join(rel).parent().unwrap()).unwrap();
            std::fs::write(dir.path().join(rel), b"{}").unwrap();
        }
        age(dir.path(), "tenants/acme/files/file-old/meta.json", 40);
        age(dir.path(), "tenants/acme/files/file-old/content", 40);
        age(dir.path(), old_run, 40);
        let cutoff = unix_now() - 30 * 86_400;
        let retention = Retention {
            files_before: Some(cutoff),
            runs_before: Some(cutoff),
        };
        let swept = store.sweep_tenant("acme", &retention).await.unwrap();
        assert_eq!(swept.files_removed, 1);
        assert_eq!(swept.run_objects_removed, 1);
        let kept_meta = std::fs::metadata(dir.path().join("tenants/acme/files/file-new/meta.json"))
            .unwrap()
            .len();
        assert_eq!(swept.bytes, kept_meta + 3 + 2);
        assert_eq!(store.get_file_meta("acme", "file-old").await.unwrap(), None);
        assert_eq!(store.file_tenant("file-old").await.unwrap(), None);
        assert!(!dir.path().join(old_run).exists());
        assert!(
            store
                .get_file_meta("acme", "file-new")
                .await
                .unwrap()
                .is_some()
        );
        // A second sweeper finds nothing more to do and the same figure.
        let again = store.sweep_tenant("acme", &retention).await.unwrap();
        assert_eq!((again.files_removed, again.run_objects_removed), (0, 0));
        assert_eq!(again.bytes, swept.bytes);
        let measured = Measured {
            bytes: again.bytes,
            measured_at: unix_now(),
        };
        store.put_usage("acme", &measured).await.unwrap();
        assert_eq!(store.usage("acme").await.unwrap(), Some(measured));
        assert_eq!(store.tenants().await.unwrap(), vec!["acme".to_string()]);
    }

    #[tokio::test]
    async fn bytes_left_by_an_old_refused_upload_are_removed_and_a_young_upload_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        for id in ["file-left", "file-uploading"] {
            let rel = format!("tenants/acme/files/{id}/content");
            std::fs::create_dir_all(dir.path().join(&rel).parent().unwrap()).unwrap();
            std::fs::write(dir.path().join(&rel), b"abcd").unwrap();
        }
        age(dir.path(), "tenants/acme/files/file-left/content", 40);
        let retention = Retention {
            files_before: Some(unix_now() - 86_400),
            runs_before: None,
        };
        let swept = store.sweep_tenant("acme", &retention).await.unwrap();
        assert_eq!(swept.files_removed, 1);
        assert_eq!(swept.bytes, 4);
        assert!(
            !dir.path()
                .join("tenants/acme/files/file-left/content")
                .exists()
        );
        assert!(
            dir.path()
                .join("tenants/acme/files/file-uploading/content")
                .exists()
        );
    }
}
