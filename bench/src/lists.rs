//! Lists at scale (issue 22): a page of a tenant's runs and of its files, read from a store
//! seeded directly with many (no cluster, no API server: the store's own list functions,
//! which the API's lists call), at a small size and at a large one. Each page's p50 at the
//! large size should be within twice that at the small one.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use codeinterp_store::{FileMeta, RunBinding, Store};
use futures::StreamExt;
use serde::Serialize;

use crate::config::Args;
use crate::stats::{self, Summary};
use crate::suite::progress;

const TENANT: &str = "bench";
/// Runs are made ten a second, from this time on (milliseconds).
const T0_MS: i64 = 1_750_000_000_000;
const RUN_EVERY_MS: i64 = 100;
const PAGE: usize = 20;

#[derive(Debug, Serialize)]
pub struct ListsReport {
    pub store: String,
    pub calls: usize,
    pub rounds: Vec<ListRound>,
}

/// One list at one size.
#[derive(Debug, Serialize)]
pub struct ListRound {
    /// `runs` or `files`.
    pub list: &'static str,
    pub entries: usize,
    pub seed_s: f64,
    /// The newest page of `PAGE`.
    pub first_page: Summary,
    /// The page after the entry halfway down the list.
    pub after_cursor: Summary,
}

pub async fn run(args: &Args) -> anyhow::Result<ListsReport> {
    let mut rounds = Vec::new();
    for &n in &args.lists_runs {
        rounds.push(runs_round(args, n).await?);
    }
    for &n in &args.lists_files {
        rounds.push(files_round(args, n).await?);
    }
    Ok(ListsReport {
        store: "local directory".into(),
        calls: args.lists_calls,
        rounds,
    })
}

/// A fresh, empty store directory for one round.
fn fresh_dir(args: &Args, name: &str) -> anyhow::Result<PathBuf> {
    let dir = args.lists_dir.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn run_id(i: usize) -> String {
    format!("run-{i:08}")
}

async fn runs_round(args: &Args, n: usize) -> anyhow::Result<ListRound> {
    let dir = fresh_dir(args, &format!("runs-{n}"))?;
    let store = Store::open(dir.to_str().context("a store path that is not UTF-8")?)?;
    progress(&format!(
        "lists: seeding {n} run index entries in {}",
        dir.display()
    ));
    let started = Instant::now();
    let keys: Vec<String> = (0..n)
        .map(|i| store.run_index_key(TENANT, T0_MS + RUN_EVERY_MS * i as i64, &run_id(i)))
        .map(|k| k.map(|k| k.to_string()))
        .collect::<Result<_, _>>()?;
    let root = dir.clone();
    tokio::task::spawn_blocking(move || write_empty_files(&root, &keys)).await??;
    // The cursor halfway down: a page after it reads its binding.
    let cursor = n / 2;
    let binding = RunBinding {
        uid: "uid".into(),
        namespace: "ns".into(),
        created_ms: T0_MS + RUN_EVERY_MS * cursor as i64,
        legacy: false,
    };
    store.bind_run(TENANT, &run_id(cursor), &binding).await?;
    let seed_s = started.elapsed().as_secs_f64();
    progress(&format!(
        "lists: seeded {n} runs in {seed_s:.1} s; timing pages"
    ));

    let newest = run_id(n - 1);
    let first_page = time(args.lists_calls, || async {
        let page = store
            .list_run_ids(TENANT, None, PAGE)
            .await?
            .context("no page")?;
        anyhow::ensure!(
            page.ids.first() == Some(&newest),
            "the newest run is not first"
        );
        Ok(())
    })
    .await?;
    let cursor_id = run_id(cursor);
    let after_cursor = time(args.lists_calls, || async {
        let page = store.list_run_ids(TENANT, Some(&cursor_id), PAGE).await?;
        let page = page.context("the cursor is not found")?;
        anyhow::ensure!(page.ids.first() == Some(&run_id(cursor - 1)), "wrong page");
        Ok(())
    })
    .await?;
    remove(&dir);
    Ok(ListRound {
        list: "runs",
        entries: n,
        seed_s,
        first_page,
        after_cursor,
    })
}

fn file_meta(i: usize) -> FileMeta {
    FileMeta {
        id: format!("file-{i:08}"),
        tenant: TENANT.into(),
        bytes: 1,
        // Ten a second.
        created_at: T0_MS / 1000 + i as i64 / 10,
        filename: "data.csv".into(),
        purpose: if i.is_multiple_of(2) {
            "assistants"
        } else {
            "assistants_output"
        }
        .into(),
        sha256: String::new(),
        run_id: None,
        content_type: None,
    }
}

async fn files_round(args: &Args, n: usize) -> anyhow::Result<ListRound> {
    let dir = fresh_dir(args, &format!("files-{n}"))?;
    let store = Store::open(dir.to_str().context("a store path that is not UTF-8")?)?;
    progress(&format!("lists: seeding {n} files in {}", dir.display()));
    let started = Instant::now();
    // A first listing of an empty tenant marks its index whole (nothing stored before it).
    store.list_files_page(TENANT, None, None, 1, true).await?;
    // Through the store, as an upload writes them: metadata and index entries.
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let store = &store;
            async move { store.put_file_meta(&file_meta(i)).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    let seed_s = started.elapsed().as_secs_f64();
    progress(&format!(
        "lists: seeded {n} files in {seed_s:.1} s; timing pages"
    ));

    let first_page = time(args.lists_calls, || async {
        let page = store
            .list_files_page(TENANT, None, None, PAGE, true)
            .await?;
        let page = page.context("no page")?;
        anyhow::ensure!(page.files.len() == PAGE.min(n), "a short page");
        Ok(())
    })
    .await?;
    let cursor = file_meta(n / 2).id;
    let after_cursor = time(args.lists_calls, || async {
        let page = store
            .list_files_page(TENANT, None, Some(&cursor), PAGE, true)
            .await?
            .context("the cursor is not found")?;
        anyhow::ensure!(!page.files.is_empty(), "an empty page");
        Ok(())
    })
    .await?;
    remove(&dir);
    Ok(ListRound {
        list: "files",
        entries: n,
        seed_s,
        first_page,
        after_cursor,
    })
}

/// Creates empty files at `keys` below `root`, on every core.
fn write_empty_files(root: &Path, keys: &[String]) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
    let chunk = keys.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = keys
            .chunks(chunk)
            .map(|keys| {
                s.spawn(move || -> anyhow::Result<()> {
                    let mut made: Option<PathBuf> = None;
                    for key in keys {
                        let path = root.join(key);
                        let parent = path.parent().context("a key without a directory")?;
                        if made.as_deref() != Some(parent) {
                            std::fs::create_dir_all(parent)?;
                            made = Some(parent.to_path_buf());
                        }
                        std::fs::File::create(&path)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow::anyhow!("a writer panicked"))?)
    })
}

/// Times `calls` sequential calls (after one not timed, which warms the page cache).
async fn time<F, Fut>(calls: usize, mut call: F) -> anyhow::Result<Summary>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    call().await?;
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        call().await?;
        samples.push(stats::ms(started.elapsed()));
    }
    Ok(Summary::of(&samples))
}

fn remove(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        progress(&format!("lists: could not remove {}: {e}", dir.display()));
    }
}
