//! Once the run has finished: the output the client has not had, read from storage a range
//! at a time as it takes the deltas, then the artifacts it has not had, then the terminal
//! event.
use std::sync::Arc;

use bytes::Bytes;
use codeinterp_store::{OutputStream, RunRecord, Store, StoreError};
use futures::future::ready;
use futures::{Stream, StreamExt, stream};
use runner_protocol::Stream as OutputKind;

use super::text::Utf8Text;
use super::wire::{Cursor, Emit};
use crate::runs::model::Run;

/// Bytes of output per replayed delta, and so per read from storage: with the 4 KiB heads of
/// the run objects, what bounds a replaying stream's memory (see the module above).
pub const DELTA_BYTES: u64 = 16 * 1024;

/// The rest of a finished run's events after what the client `has`: output, artifacts and
/// the terminal event with `run`.
pub fn rest(store: Store, rec: RunRecord, run: Box<Run>, has: Cursor) -> impl Stream<Item = Emit> {
    let artifacts: Vec<Emit> = run
        .artifacts
        .iter()
        .skip(usize::try_from(has.artifacts).unwrap_or(usize::MAX))
        .cloned()
        .map(Emit::Artifact)
        .collect();
    let rec = Arc::new(rec);
    output(store.clone(), rec.clone(), OutputKind::Stdout, has.out[0])
        .chain(output(store, rec, OutputKind::Stderr, has.out[1]))
        .chain(stream::iter(artifacts))
        .chain(stream::once(ready(Emit::Terminal(run))))
}

/// One stream's stored output from byte `from` on, as deltas.
fn output(
    store: Store,
    rec: Arc<RunRecord>,
    kind: OutputKind,
    from: u64,
) -> impl Stream<Item = Emit> {
    let which = match kind {
        OutputKind::Stdout => OutputStream::Stdout,
        OutputKind::Stderr => OutputStream::Stderr,
    };
    stream::once(async move { store.output(&rec, which).await }).flat_map(
        move |opened| match opened {
            Ok(stored) => deltas(stored.chunks(from, DELTA_BYTES), kind).left_stream(),
            Err(e) => stream::iter([stop(e)]).right_stream(),
        },
    )
}

/// Chunks as deltas: text that never splits a character, and bytes at the very end that
/// never complete one as U+FFFD. A read that fails ends the stream.
fn deltas(
    chunks: impl Stream<Item = Result<Bytes, StoreError>>,
    kind: OutputKind,
) -> impl Stream<Item = Emit> {
    let mut text = Utf8Text::default();
    let delta = move |(text, bytes): (String, u64)| {
        (bytes > 0).then_some(Emit::Output {
            stream: kind,
            text,
            bytes,
        })
    };
    chunks
        .map(Some)
        .chain(stream::once(ready(None)))
        .filter_map(move |chunk| {
            ready(match chunk {
                Some(Ok(bytes)) => delta(text.push(&bytes)),
                Some(Err(e)) => Some(stop(e)),
                None => delta(text.finish()),
            })
        })
}

/// Storage failed mid-replay: the stream ends there, and the client resumes after the last
/// event it got.
fn stop(e: StoreError) -> Emit {
    tracing::warn!(error = %e, "replaying stored output");
    Emit::Stop
}
