//! A finished run's output, read a range at a time: whoever replays it (the REST API's event
//! streams) holds one range, never the whole stream, and reads the next only when the last
//! one was taken.
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use object_store::ObjectStore;
use object_store::path::Path;

use crate::{OutputStream, RECORD_VERSION, RunRecord, Store, StoreError};

/// One stream of a run's output as stored, and its length.
#[derive(Clone, Debug)]
pub struct StoredOutput {
    source: Source,
    len: u64,
}

#[derive(Clone, Debug)]
enum Source {
    Object {
        inner: Arc<dyn ObjectStore>,
        key: Path,
    },
    /// Records of the first layout carry their output inline; a missing object is empty.
    Inline(Bytes),
}

impl Store {
    /// One stream of a run's output, opened for reading in ranges (its length is looked up,
    /// nothing is read yet).
    pub async fn output(
        &self,
        rec: &RunRecord,
        stream: OutputStream,
    ) -> Result<StoredOutput, StoreError> {
        if rec.v < RECORD_VERSION {
            let text = match stream {
                OutputStream::Stdout => &rec.stdout_head,
                OutputStream::Stderr => &rec.stderr_head,
            };
            return Ok(StoredOutput::inline(Bytes::from(text.clone())));
        }
        let key = self.output_key(rec, stream)?;
        match self.inner.head(&key).await.map_err(StoreError::from) {
            Ok(meta) => Ok(StoredOutput {
                source: Source::Object {
                    inner: self.inner.clone(),
                    key,
                },
                len: meta.size,
            }),
            Err(StoreError::NotFound) => Ok(StoredOutput::inline(Bytes::new())),
            Err(e) => Err(e),
        }
    }
}

impl StoredOutput {
    fn inline(bytes: Bytes) -> Self {
        StoredOutput {
            len: bytes.len() as u64,
            source: Source::Inline(bytes),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes of `range` that exist: cut at the end of the output, none past it.
    pub async fn read(&self, range: Range<u64>) -> Result<Bytes, StoreError> {
        let range = range.start.min(self.len)..range.end.min(self.len);
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        match &self.source {
            Source::Inline(bytes) => Ok(bytes.slice(range.start as usize..range.end as usize)),
            Source::Object { inner, key } => Ok(inner.get_range(key, range).await?),
        }
    }

    /// The output from byte `from` to its end, `chunk` bytes at a time. Each range is read
    /// when the stream is polled for it, so a consumer that stops taking stops the reading.
    pub fn chunks(
        self,
        from: u64,
        chunk: u64,
    ) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static {
        let chunk = chunk.max(1);
        futures::stream::try_unfold((self, from), move |(output, at)| async move {
            if at >= output.len {
                return Ok(None);
            }
            let bytes = output.read(at..at.saturating_add(chunk)).await?;
            if bytes.is_empty() {
                return Ok(None);
            }
            let next = at + bytes.len() as u64;
            Ok(Some((bytes, (output, next))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codeinterp_crds::{Language, Phase, Usage};
    use futures::TryStreamExt;

    fn record(v: u32) -> RunRecord {
        RunRecord {
            v,
            id: "run-a".into(),
            uid: "uid-a".into(),
            tenant: "acme".into(),
            namespace: "sandbox".into(),
            phase: Phase::Completed,
            language: Language::Python,
            created_at: 1,
            started_at: None,
            completed_at: None,
            exit_code: Some(0),
            signal: None,
            stdout_head: "inline output".into(),
            stderr_head: String::new(),
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_truncated: false,
            stderr_truncated: false,
            usage: Usage::default(),
            artifacts: vec![],
            error: None,
            start_mode: None,
            preloaded: false,
        }
    }

    #[tokio::test]
    async fn output_is_read_in_ranges_from_any_offset_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let rec = record(RECORD_VERSION);
        store
            .put_output(
                "acme",
                "sandbox",
                "uid-a",
                OutputStream::Stdout,
                Bytes::from(bytes.clone()),
            )
            .await
            .unwrap();
        let out = store.output(&rec, OutputStream::Stdout).await.unwrap();
        assert_eq!(out.len(), 10_000);
        assert_eq!(out.read(9_990..20_000).await.unwrap(), &bytes[9_990..]);
        assert!(out.read(10_000..10_001).await.unwrap().is_empty());
        for from in [0, 1, 4095, 9_999, 10_000, 50_000] {
            let chunks: Vec<Bytes> = out.clone().chunks(from, 4096).try_collect().await.unwrap();
            assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= 4096));
            let from = (from as usize).min(bytes.len());
            assert_eq!(chunks.concat(), &bytes[from..], "from {from}");
        }
        // A stream never written (the program printed nothing on it) is empty.
        let none = store.output(&rec, OutputStream::Stderr).await.unwrap();
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn a_record_of_the_first_layout_reads_its_inline_output() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let out = store
            .output(&record(0), OutputStream::Stdout)
            .await
            .unwrap();
        let chunks: Vec<Bytes> = out.chunks(7, 3).try_collect().await.unwrap();
        assert_eq!(chunks.concat(), b"output");
    }
}
