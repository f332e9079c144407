//! Output files as the record brings them: each streamed into object storage while the
//! record is read, never held whole, so a run may hand back files as large as its inputs
//! and the operator's memory stays a few buffers per run. A file is stored under an id made
//! from the run and its name (storing it twice writes the same object), and listed only
//! once its metadata is written, after the record is done; a file cut short or refused is
//! never listed.
use bytes::Bytes;
use codeinterp_store::{Store, StoreError, UploadError};
use futures::StreamExt;
use runner_protocol::Event;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::results::artifact_id;

/// Chunks of a file in flight to storage (each at most a frame's, 8 KiB).
const IN_FLIGHT: usize = 16;
/// Bytes kept of a file's start, to tell an image by its bytes.
const HEAD_BYTES: usize = 512;

/// A file stored while the record was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFile {
    pub name: String,
    pub id: String,
    pub bytes: u64,
    pub sha256: String,
    /// The first bytes (to tell an image).
    pub head: Vec<u8>,
}

type Uploading = JoinHandle<Result<Result<(u64, String), UploadError<Cut>>, StoreError>>;

struct Upload {
    name: String,
    id: String,
    head: Vec<u8>,
    chunks: mpsc::Sender<Result<Bytes, Cut>>,
    task: Uploading,
}

/// A file that ended before all of it came.
#[derive(Debug)]
pub struct Cut;

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the file was cut short")
    }
}

/// Where a record's files go as they arrive.
pub struct Sink {
    store: Store,
    tenant: String,
    run_uid: String,
    max_bytes: u64,
    current: Option<Upload>,
    stored: Vec<StoredFile>,
}

impl Sink {
    pub fn new(store: &Store, tenant: &str, run_uid: &str, max_bytes: u64) -> Self {
        Sink {
            store: store.clone(),
            tenant: tenant.to_string(),
            run_uid: run_uid.to_string(),
            max_bytes,
            current: None,
            stored: Vec::new(),
        }
    }

    /// Takes what a file event says; other events pass by.
    pub async fn take(&mut self, event: &Event) {
        match event {
            Event::FileStart { name, .. } => {
                self.abort().await;
                self.current = Some(self.begin(name));
            }
            Event::FileData(bytes) => self.write(bytes).await,
            Event::Artifact {
                name,
                bytes,
                sha256,
            } => self.done(name, *bytes, sha256).await,
            Event::Skipped(skipped) if self.is_current(&skipped.name) => self.abort().await,
            _ => {}
        }
    }

    /// The files stored in full; a file still open is dropped.
    pub async fn finish(mut self) -> Vec<StoredFile> {
        self.abort().await;
        self.stored
    }

    fn is_current(&self, name: &str) -> bool {
        self.current.as_ref().is_some_and(|u| u.name == name)
    }

    fn begin(&self, name: &str) -> Upload {
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let id = artifact_id(&self.run_uid, name);
        let (store, tenant, file, max) = (
            self.store.clone(),
            self.tenant.clone(),
            id.clone(),
            self.max_bytes,
        );
        // Awaited by `done` or `abort`: never left behind.
        let task = tokio::spawn(async move {
            let chunks = tokio_stream_of(rx);
            store.put_file_stream(&tenant, &file, chunks, max).await
        });
        Upload {
            name: name.to_string(),
            id,
            head: Vec::new(),
            chunks: tx,
            task,
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        let Some(upload) = self.current.as_mut() else {
            return;
        };
        if upload.head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - upload.head.len()).min(bytes.len());
            upload.head.extend_from_slice(&bytes[..take]);
        }
        // A send fails only when the upload gave up; `done` then reports it.
        let _ = upload.chunks.send(Ok(Bytes::copy_from_slice(bytes))).await;
    }

    async fn done(&mut self, name: &str, bytes: u64, sha256: &str) {
        let Some(upload) = self.current.take().filter(|u| u.name == name) else {
            return;
        };
        drop(upload.chunks);
        match upload.task.await {
            Ok(Ok(Ok((size, digest)))) if size == bytes && digest.eq_ignore_ascii_case(sha256) => {
                self.stored.push(StoredFile {
                    name: upload.name,
                    id: upload.id,
                    bytes,
                    sha256: digest,
                    head: upload.head,
                });
            }
            Ok(Ok(Ok(_))) => {
                tracing::warn!(file = name, "an output file changed while it was stored")
            }
            Ok(Ok(Err(_))) => tracing::warn!(file = name, "an output file was over its cap"),
            Ok(Err(e)) => {
                tracing::warn!(file = name, error = %e, "an output file could not be stored")
            }
            Err(e) => tracing::warn!(file = name, error = %e, "storing an output file failed"),
        }
    }

    async fn abort(&mut self) {
        if let Some(upload) = self.current.take() {
            let _ = upload.chunks.send(Err(Cut)).await;
            drop(upload.chunks);
            let _ = upload.task.await;
        }
    }
}

fn tokio_stream_of(
    mut rx: mpsc::Receiver<Result<Bytes, Cut>>,
) -> futures::stream::BoxStream<'static, Result<Bytes, Cut>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// A sink for the run's files: its tenant's, capped at what one of its files may be.
pub fn for_run(ctx: &crate::context::Context, run: &codeinterp_crds::CodeRun) -> Sink {
    use kube::ResourceExt;
    Sink::new(
        &ctx.store,
        &ctx.tenant(run),
        &run.uid().unwrap_or_default(),
        ctx.limits(run).max_artifact_bytes,
    )
}
