//! Ordered indexes: one empty object per entry, named `<19-digit key>_<id>` so that name order
//! is list order, filed under directories cut from the key's leading digits
//! (`<digits 0..10>/<10..12>/<12..14>/<14..16>/<name>`). A page costs the same however long the index:
//! - a backend that lists in key order (S3 and the rest) seeks: one listing that starts after
//!   the cursor, of which a page takes what it needs;
//! - a local directory is not listed in order (a walk reads whole directories, unsorted), so
//!   a page descends the tree instead, reading one directory per level and then as many
//!   leaves as it takes. Keys are newest-first times in milliseconds, so no directory holds
//!   more than 100 others below the top one (whose directories are 12 days apart; theirs
//!   are 3 hours, 100 seconds and a second apart) and a leaf holds what was made within
//!   one second.
use std::collections::VecDeque;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;

use crate::{Store, StoreError};

/// How many leading digits of a key each directory level takes.
const LEVELS: [usize; 4] = [10, 2, 2, 2];
const KEY_DIGITS: usize = 19;

/// How a backend's listings can be read in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listing {
    /// Listings come in key order and can start after a key (S3's `start-after`).
    Ordered,
    /// Listings come in no order (a local directory): read the index's tree level by level.
    Directories,
}

/// An entry's name: `key` zero-padded to 19 digits, then the id.
pub(crate) fn entry_name(key: u64, id: &str) -> String {
    format!("{key:0KEY_DIGITS$}_{id}")
}

/// The id an entry's name carries, if it is an entry's name.
pub(crate) fn entry_id(name: &str) -> Option<&str> {
    let (key, id) = name.split_once('_')?;
    (key.len() == KEY_DIGITS && key.bytes().all(|b| b.is_ascii_digit()) && !id.is_empty())
        .then_some(id)
}

/// The directories an entry is filed under.
fn dirs(name: &str) -> impl Iterator<Item = &str> {
    LEVELS.iter().scan(0, move |start, width| {
        let dir = &name[*start..*start + width];
        *start += width;
        Some(dir)
    })
}

/// Where the entry `name` of the index at `prefix` is stored.
pub(crate) fn entry_path(prefix: &Path, name: &str) -> Path {
    dirs(name)
        .fold(prefix.clone(), |p, dir| p.child(dir))
        .child(name)
}

/// The path of an entry below its index, as `entry_path` makes it, or `None`.
fn name_in_tree(prefix: &Path, location: &Path) -> Option<String> {
    let parts: Vec<_> = location.prefix_match(prefix)?.collect();
    let (name, filed_under) = parts.split_last()?;
    let name = name.as_ref();
    entry_id(name)?;
    let filed = dirs(name).eq(filed_under.iter().map(|p| p.as_ref()));
    filed.then(|| name.to_string())
}

/// One directory of the tree being walked: the digits its path stands for, and its children
/// not yet visited, in order.
struct Level {
    path: Path,
    digits: String,
    depth: usize,
    left: VecDeque<String>,
}

impl Store {
    /// The entries' names of the index at `prefix`, in order, after the entry `after`; read
    /// lazily, so a page costs what it takes.
    pub(crate) async fn index_names<'a>(
        &'a self,
        prefix: &'a Path,
        after: Option<&'a str>,
    ) -> Result<BoxStream<'a, Result<String, StoreError>>, StoreError> {
        if self.listing == Listing::Ordered {
            let listed = match after {
                Some(a) => self
                    .inner
                    .list_with_offset(Some(prefix), &entry_path(prefix, a)),
                None => self.inner.list(Some(prefix)),
            };
            return Ok(listed
                .map_err(StoreError::from)
                .try_filter_map(move |m| async move { Ok(name_in_tree(prefix, &m.location)) })
                .boxed());
        }
        let Some(root) = self
            .read_level(prefix.clone(), String::new(), 0, after)
            .await?
        else {
            return Ok(futures::stream::empty().boxed());
        };
        Ok(
            futures::stream::try_unfold(vec![root], move |mut stack| async move {
                match self.walk_next(&mut stack, after).await? {
                    Some(name) => Ok(Some((name, stack))),
                    None => Ok(None),
                }
            })
            .boxed(),
        )
    }

    /// One directory of the tree, its children that may hold entries after `after` sorted;
    /// `None` if it is gone.
    async fn read_level(
        &self,
        path: Path,
        digits: String,
        depth: usize,
        after: Option<&str>,
    ) -> Result<Option<Level>, StoreError> {
        let listed = match self.inner.list_with_delimiter(Some(&path)).await {
            Ok(l) => l,
            // Emptied and removed since its parent was read.
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut left: Vec<String> = if depth == LEVELS.len() {
            listed
                .objects
                .iter()
                .filter_map(|m| m.location.filename())
                .filter(|n| n.starts_with(&digits) && entry_id(n).is_some())
                .filter(|n| after.is_none_or(|a| *n > a))
                .map(str::to_string)
                .collect()
        } else {
            let width = LEVELS[depth];
            listed
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename())
                .filter(|d| d.len() == width && d.bytes().all(|b| b.is_ascii_digit()))
                .filter(|d| at_or_after(&format!("{digits}{d}"), after))
                .map(str::to_string)
                .collect()
        };
        left.sort();
        Ok(Some(Level {
            path,
            digits,
            depth,
            left: left.into(),
        }))
    }

    /// The next entry of a walk of the tree, descending into directories as it goes.
    async fn walk_next(
        &self,
        stack: &mut Vec<Level>,
        after: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        loop {
            let Some(level) = stack.last_mut() else {
                return Ok(None);
            };
            let Some(child) = level.left.pop_front() else {
                stack.pop();
                continue;
            };
            if level.depth == LEVELS.len() {
                return Ok(Some(child));
            }
            let path = level.path.child(child.as_str());
            let digits = format!("{}{child}", level.digits);
            let depth = level.depth + 1;
            if let Some(next) = self.read_level(path, digits, depth, after).await? {
                stack.push(next);
            }
        }
    }
}

/// Whether a directory standing for `digits` may hold entries after the entry `after`.
fn at_or_after(digits: &str, after: Option<&str>) -> bool {
    after.is_none_or(|a| digits >= a.get(..digits.len()).unwrap_or(a))
}

/// Reads of a page's items at once (records or metadata behind the names).
const READS_AT_ONCE: usize = 8;

/// A page of an index: at most `limit` of what `names` yields, each as `keep` reads it
/// (`None` skips it: an entry whose item is gone), and whether there is more. Reads a few
/// items ahead, never the rest of the index.
pub(crate) async fn take_page<T, F, Fut>(
    names: BoxStream<'_, Result<String, StoreError>>,
    limit: usize,
    mut keep: F,
) -> Result<(Vec<T>, bool), StoreError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, StoreError>>,
{
    let mut items = names
        .map(|name| {
            let read = name.map(&mut keep);
            async move { read?.await }
        })
        .buffered(READS_AT_ONCE.min(limit + 1));
    let mut page = Vec::with_capacity(limit);
    while let Some(item) = items.try_next().await? {
        if let Some(item) = item {
            if page.len() == limit {
                return Ok((page, true));
            }
            page.push(item);
        }
    }
    Ok((page, false))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use object_store::{
        GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        PutMultipartOptions, PutOptions, PutPayload, PutResult,
    };

    use super::*;
    use crate::{FileMeta, RunBinding};

    /// A backend that counts what is read from it: names listed, objects read, requests.
    #[derive(Debug)]
    struct Counted {
        inner: Arc<dyn ObjectStore>,
        names: Arc<AtomicUsize>,
        reads: AtomicUsize,
        requests: AtomicUsize,
    }

    impl Counted {
        fn reset(&self) {
            for c in [&*self.names, &self.reads, &self.requests] {
                c.store(0, Ordering::SeqCst);
            }
        }
        fn figures(&self) -> (usize, usize, usize) {
            let get = |c: &AtomicUsize| c.load(Ordering::SeqCst);
            (get(&self.names), get(&self.reads), get(&self.requests))
        }
        fn counted(
            &self,
            s: BoxStream<'static, object_store::Result<ObjectMeta>>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            let names = self.names.clone();
            s.inspect(move |_| {
                names.fetch_add(1, Ordering::SeqCst);
            })
            .boxed()
        }
    }

    impl std::fmt::Display for Counted {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Counted({})", self.inner)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Counted {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.requests.fetch_add(1, Ordering::SeqCst);
            self.inner.get_opts(location, options).await
        }
        async fn delete(&self, location: &Path) -> object_store::Result<()> {
            self.inner.delete(location).await
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.counted(self.inner.list(prefix))
        }
        fn list_with_offset(
            &self,
            prefix: Option<&Path>,
            offset: &Path,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.counted(self.inner.list_with_offset(prefix, offset))
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            let listed = self.inner.list_with_delimiter(prefix).await?;
            let n = listed.objects.len() + listed.common_prefixes.len();
            self.names.fetch_add(n, Ordering::SeqCst);
            Ok(listed)
        }
        async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }

    /// A local directory (read as a tree) or an ordered backend (S3's kind, in memory).
    fn counted_store(listing: Listing) -> (tempfile::TempDir, Arc<Counted>, Store) {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn ObjectStore> = match listing {
            Listing::Directories => Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir.path())
                    .unwrap()
                    .with_automatic_cleanup(true),
            ),
            Listing::Ordered => Arc::new(object_store::memory::InMemory::new()),
        };
        let counted = Arc::new(Counted {
            inner,
            names: Arc::default(),
            reads: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
        });
        let store = Store::on(counted.clone(), listing);
        (dir, counted, store)
    }

    const T0: i64 = 1_750_000_000_000;

    /// `n` runs, one every 10 ms, `run-0` the oldest; the one at `cursor` bound (a cursor
    /// reads its binding).
    async fn seed_runs(store: &Store, n: usize, cursor: usize) {
        futures::stream::iter(0..n)
            .for_each_concurrent(16, |i| async move {
                let key = store.run_index_key("acme", T0 + 10 * i as i64, &format!("run-{i}"));
                store
                    .inner
                    .put(&key.unwrap(), PutPayload::new())
                    .await
                    .unwrap();
            })
            .await;
        let binding = RunBinding {
            uid: "u".into(),
            namespace: "ns".into(),
            created_ms: T0 + 10 * cursor as i64,
            legacy: false,
        };
        let key = store.key(&["tenants", "acme", "run-ids", &format!("run-{cursor}.json")]);
        let body = serde_json::to_vec(&binding).unwrap();
        store
            .inner
            .put(&key, Bytes::from(body).into())
            .await
            .unwrap();
    }

    async fn a_page_of_runs_reads_a_bounded_part_of_ten_thousand(listing: Listing, most: usize) {
        let (_dir, counted, store) = counted_store(listing);
        seed_runs(&store, 10_000, 5_000).await;
        counted.reset();
        let page = store.list_run_ids("acme", None, 20).await.unwrap().unwrap();
        let first: Vec<String> = (0..20).map(|i| format!("run-{}", 9_999 - i)).collect();
        assert_eq!(page.ids, first);
        assert!(page.has_more);
        let (names, _, _) = counted.figures();
        assert!(
            names <= most,
            "{listing:?}: a first page listed {names} names"
        );

        counted.reset();
        let page = store
            .list_run_ids("acme", Some("run-5000"), 20)
            .await
            .unwrap()
            .unwrap();
        let deep: Vec<String> = (0..20).map(|i| format!("run-{}", 4_999 - i)).collect();
        assert_eq!(page.ids, deep);
        let (names, reads, _) = counted.figures();
        assert!(
            names <= most,
            "{listing:?}: a page after a cursor listed {names} names"
        );
        assert_eq!(reads, 1, "the cursor's binding, nothing else");
    }

    #[tokio::test]
    async fn a_page_of_runs_in_a_local_directory_lists_a_few_directories_not_the_index() {
        // The root's, one directory per level (100 seconds: 100 leaves) and a leaf or two.
        a_page_of_runs_reads_a_bounded_part_of_ten_thousand(Listing::Directories, 400).await;
    }

    #[tokio::test]
    async fn a_page_of_runs_on_an_ordered_backend_is_one_listing_from_the_cursor() {
        // The page, one more for has_more, and the few read ahead.
        a_page_of_runs_reads_a_bounded_part_of_ten_thousand(Listing::Ordered, 40).await;
    }

    #[tokio::test]
    async fn the_last_page_of_runs_ends_without_more() {
        let (_dir, _counted, store) = counted_store(Listing::Directories);
        seed_runs(&store, 30, 5).await;
        let page = store
            .list_run_ids("acme", Some("run-5"), 20)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(page.ids, ["run-4", "run-3", "run-2", "run-1", "run-0"]);
        assert!(!page.has_more);
    }

    #[tokio::test]
    async fn entries_of_the_flat_index_are_moved_into_the_tree_and_listed_in_order() {
        for listing in [Listing::Directories, Listing::Ordered] {
            let (_dir, _counted, store) = counted_store(listing);
            seed_runs(&store, 3, 0).await;
            // Two runs indexed by the first layout, one between the others in time.
            for (i, ms) in [(3, T0 + 1000), (4, T0 + 15)] {
                let flat = store
                    .index_prefix("acme")
                    .unwrap()
                    .child(crate::runs::tests_index_name(ms, &format!("run-{i}")));
                store.inner.put(&flat, PutPayload::new()).await.unwrap();
            }
            let page = store.list_run_ids("acme", None, 10).await.unwrap().unwrap();
            assert_eq!(
                page.ids,
                ["run-3", "run-2", "run-4", "run-1", "run-0"],
                "{listing:?}"
            );
            let root = store
                .inner
                .list_with_delimiter(Some(&store.index_prefix("acme").unwrap()))
                .await
                .unwrap();
            assert!(root.objects.is_empty(), "{listing:?}: moved, not copied");
        }
    }

    fn file(i: usize, purpose: &str) -> FileMeta {
        FileMeta {
            id: format!("file-{i:05}"),
            tenant: "acme".into(),
            bytes: 1,
            // Ten a second.
            created_at: 1_750_000_000 + i as i64 / 10,
            filename: "a.txt".into(),
            purpose: purpose.into(),
            sha256: String::new(),
            run_id: None,
            content_type: None,
        }
    }

    #[tokio::test]
    async fn a_page_of_files_reads_the_metadata_of_the_page_and_no_more() {
        // Ordered: the page and what is read ahead. A local directory: one directory per
        // level, the fullest one of 200 seconds (2,000 files ten a second), and the leaves.
        for (listing, n, most) in [
            (Listing::Ordered, 10_000, 40),
            (Listing::Directories, 2_000, 300),
        ] {
            let (_dir, counted, store) = counted_store(listing);
            store
                .list_files_page("acme", None, None, 1, true)
                .await
                .unwrap();
            futures::stream::iter(0..n)
                .for_each_concurrent(16, |i: usize| {
                    let purpose = if i.is_multiple_of(2) {
                        "assistants"
                    } else {
                        "assistants_output"
                    };
                    let meta = file(i, purpose);
                    let store = &store;
                    async move { store.put_file_meta(&meta).await.unwrap() }
                })
                .await;
            counted.reset();
            let page = store
                .list_files_page("acme", None, None, 20, true)
                .await
                .unwrap()
                .unwrap();
            let ids: Vec<&str> = page.files.iter().map(|f| f.id.as_str()).collect();
            // Newest first; by id within a second.
            let want: Vec<String> = (0..20)
                .map(|i| format!("file-{:05}", (n - 10 - i / 10 * 10) + i % 10))
                .collect();
            assert_eq!(ids, want, "{listing:?}");
            assert!(page.has_more);
            let (names, reads, _) = counted.figures();
            assert!(
                reads <= 1 + 21 + READS_AT_ONCE,
                "{listing:?}: {reads} reads"
            );
            assert!(names <= most, "{listing:?}: {names} names");

            counted.reset();
            let after = format!("file-{:05}", n / 2 + 4);
            let page = store
                .list_files_page("acme", Some("assistants"), Some(&after), 3, true)
                .await
                .unwrap()
                .unwrap();
            let ids: Vec<&str> = page.files.iter().map(|f| f.id.as_str()).collect();
            // The rest of its second, then the second before.
            let want: Vec<String> = [6, 8, n / 2 - 10 - n / 2 % 10]
                .iter()
                .map(|d| format!("file-{:05}", if *d < 10 { n / 2 + d } else { *d }))
                .collect();
            assert_eq!(ids, want, "{listing:?}");
            let (names, reads, _) = counted.figures();
            assert!(reads <= 2 + 4 + READS_AT_ONCE, "{listing:?}: {reads} reads");
            assert!(names <= most, "{listing:?}: {names} names");
        }
    }

    #[tokio::test]
    async fn files_stored_before_the_index_are_listed_and_a_deleted_file_is_not() {
        let (_dir, _counted, store) = counted_store(Listing::Directories);
        for i in 0..3 {
            let meta = file(i, "assistants");
            let key = store.file_key("acme", &meta.id, "meta.json").unwrap();
            let body = serde_json::to_vec(&meta).unwrap();
            store
                .inner
                .put(&key, Bytes::from(body).into())
                .await
                .unwrap();
        }
        let page = store
            .list_files_page("acme", None, None, 10, true)
            .await
            .unwrap()
            .unwrap();
        let ids: Vec<&str> = page.files.iter().map(|f| f.id.as_str()).collect();
        // Made within one second: by id.
        assert_eq!(ids, ["file-00000", "file-00001", "file-00002"]);
        store.delete_file("acme", "file-00001").await.unwrap();
        let page = store
            .list_files_page("acme", None, None, 10, false)
            .await
            .unwrap()
            .unwrap();
        let ids: Vec<&str> = page.files.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["file-00002", "file-00000"]);
        assert_eq!(
            store
                .list_files_page("acme", None, Some("file-00001"), 10, true)
                .await
                .unwrap(),
            None
        );
    }

    #[test]
    fn an_entry_is_filed_under_its_leading_digits() {
        let name = entry_name(9_223_370_312_123_456_789, "run-a");
        assert_eq!(name, "9223370312123456789_run-a");
        let p = entry_path(&Path::from("t/run-index"), &name);
        assert_eq!(
            p.as_ref(),
            "t/run-index/9223370312/12/34/56/9223370312123456789_run-a"
        );
        assert_eq!(
            name_in_tree(&Path::from("t/run-index"), &p).as_deref(),
            Some(name.as_str())
        );
        assert_eq!(entry_id(&name), Some("run-a"));
        assert_eq!(entry_id("12_run-a"), None);
        assert_eq!(entry_name(5, "x"), "0000000000000000005_x");
    }

    #[test]
    fn a_directory_is_walked_when_it_may_hold_what_follows_the_cursor() {
        let after = Some("9223370312123456789_run-a");
        assert!(at_or_after("9223370312", after));
        assert!(at_or_after("9223370313", after));
        assert!(!at_or_after("9223370311", after));
        assert!(at_or_after("922337031212", after));
        assert!(!at_or_after("922337031211", after));
        assert!(at_or_after("0000000000", None));
    }
}
