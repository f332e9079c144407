//! While the program runs: its pod's log, followed through the protocol's [`Follower`] with
//! an events-only decoder (the same validation the operator applies, keeping no output), as
//! `run.output.delta` events. The log is read only as fast as the client takes events.
//!
//! A run in a container shares its pod, and the pod's log, with the container's other runs:
//! only its own record is followed ([`super::container_log`]), from a little before the run
//! was made, and the follow ends when the run does (the pod goes on).
use std::sync::Arc;
use std::time::Duration;

use codeinterp_crds::CodeRun;
use futures::future::ready;
use futures::io::AsyncRead;
use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::SignedDuration;
use kube::api::LogParams;
use kube::{Api, ResourceExt};
use runner_protocol::{
    Decoder, Event, Follower, MAX_RECORD_BYTES, RUNNER_CONTAINER, Stream as OutputKind,
};

use super::Ctx;
use super::container_log::only_run;
use super::text::Utf8Text;
use super::wire::{Emit, index};
use crate::runs::service;

/// How much of a container's log before a run's creation is read, for clocks that differ.
const CLOCK_SKEW: Duration = Duration::from_secs(10);

type Log = Box<dyn AsyncRead + Unpin + Send + 'static>;

/// The output deltas of the program while it runs, from `has` (the bytes of each stream the
/// client already has) on; nothing if the run has no pod to follow (queued, or finished).
pub fn output(ctx: Arc<Ctx>, has: [u64; 2]) -> impl Stream<Item = Emit> {
    stream::once(follow(ctx.clone()))
        .filter_map(ready)
        .flat_map(move |(follower, in_container)| {
            let live = stream::unfold(Live::new(follower, has), |mut live| async move {
                live.next().await.map(|emit| (emit, live))
            });
            if !in_container {
                return live.boxed();
            }
            // The container's pod outlives the run: its end ends the follow.
            let ctx = ctx.clone();
            let ended = async move { ctx.wait_for(CodeRun::is_finished).await };
            live.take_until(Box::pin(ended)).boxed()
        })
}

/// The runner's log, if the run is running on a pod, and whether it is a container's.
async fn follow(ctx: Arc<Ctx>) -> Option<(Follower<Log>, bool)> {
    let run = service::live_run(&ctx.state, &ctx.tenant, &ctx.id)
        .await
        .ok()??;
    if run.is_finished() {
        return None;
    }
    let pod = run.status.as_ref()?.pod_name.clone()?;
    let limits = run.spec.limits.clamp(&ctx.state.settings.maxima);
    let pods: Api<Pod> = Api::namespaced(ctx.state.kube.clone(), ctx.state.runs.namespace());
    let in_container = run.spec.container.is_some();
    let params = log_params(&run);
    let log = pods.log_stream(&pod, &params).await.ok()?;
    let log: Log = if in_container {
        Box::new(only_run(log, &run.uid().unwrap_or_default()))
    } else {
        Box::new(log)
    };
    Some((
        Follower::new(log, Decoder::events_only(&limits)),
        in_container,
    ))
}

/// A run's own pod: its whole log, at most a record's size. A container's: from a little
/// before the run was made, however long (the follow stops at the run's end).
fn log_params(run: &CodeRun) -> LogParams {
    let mut params = LogParams {
        container: Some(RUNNER_CONTAINER.into()),
        follow: true,
        ..Default::default()
    };
    if run.spec.container.is_none() {
        params.limit_bytes = Some(i64::try_from(MAX_RECORD_BYTES).unwrap_or(i64::MAX));
        return params;
    }
    let skew = SignedDuration::try_from(CLOCK_SKEW).unwrap_or_default();
    params.since_time = run
        .creation_timestamp()
        .and_then(|t| t.0.checked_sub(skew).ok());
    params
}

/// A followed log turned into deltas.
struct Live<R> {
    follower: Follower<R>,
    text: [Utf8Text; 2],
    /// Bytes of each stream the log has carried so far.
    seen: [u64; 2],
    /// Bytes of each stream the client has (delivered before this stream, or by it).
    has: [u64; 2],
}

impl<R: AsyncRead + Unpin> Live<R> {
    fn new(follower: Follower<R>, has: [u64; 2]) -> Self {
        Live {
            follower,
            text: Default::default(),
            seen: [0; 2],
            has,
        }
    }

    /// The next delta; `None` once the program has exited or the log ends (what it did not
    /// carry is replayed from storage).
    async fn next(&mut self) -> Option<Emit> {
        loop {
            match self.follower.next().await? {
                Event::Output { stream, bytes } => {
                    if let Some(delta) = self.delta(stream, &bytes) {
                        return Some(delta);
                    }
                }
                Event::Exit(_) | Event::End => return None,
                _ => {}
            }
        }
    }

    fn delta(&mut self, stream: OutputKind, bytes: &[u8]) -> Option<Emit> {
        let i = index(stream);
        let start = self.seen[i];
        self.seen[i] += bytes.len() as u64;
        // The client has the first `has[i]` bytes of this stream: skip those.
        let skip = self.has[i].saturating_sub(start).min(bytes.len() as u64) as usize;
        let (text, used) = self.text[i].push(&bytes[skip..]);
        self.has[i] += used;
        (used > 0).then_some(Emit::Output {
            stream,
            text,
            bytes: used,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use codeinterp_crds::{Limits, Maxima};
    use runner_protocol::{ExitReport, Frame, PROTOCOL_VERSION, encode_frame};

    fn output(stream: OutputKind, bytes: &[u8]) -> Frame {
        let d = base64::engine::general_purpose::STANDARD.encode(bytes);
        match stream {
            OutputKind::Stdout => Frame::Stdout { d },
            OutputKind::Stderr => Frame::Stderr { d },
        }
    }

    /// The deltas a log of these frames gives a client that has `has` bytes of each stream.
    async fn deltas(frames: &[Frame], has: [u64; 2]) -> Vec<(&'static str, String, u64)> {
        let mut log = encode_frame(&Frame::Start {
            v: PROTOCOL_VERSION,
        });
        log.extend(frames.iter().flat_map(encode_frame));
        let limits = Limits::default().clamp(&Maxima::default());
        let follower = Follower::new(futures::io::Cursor::new(log), Decoder::events_only(&limits));
        let mut live = Live::new(follower, has);
        let mut out = Vec::new();
        while let Some(emit) = live.next().await {
            match emit {
                Emit::Output {
                    stream,
                    text,
                    bytes,
                } => out.push((stream.as_str(), text, bytes)),
                other => panic!("{other:?}"),
            }
        }
        out
    }

    fn record() -> Vec<Frame> {
        vec![
            output(OutputKind::Stdout, b"h\xc3"),
            output(OutputKind::Stdout, b"\xa9llo "),
            output(OutputKind::Stderr, b"oops"),
            output(OutputKind::Stdout, b"world"),
            Frame::Exit(ExitReport {
                exit_code: Some(0),
                ..Default::default()
            }),
            // Read no further than the exit: what follows comes from storage.
            output(OutputKind::Stdout, b"never streamed"),
            Frame::End,
        ]
    }

    #[tokio::test]
    async fn a_followed_log_gives_whole_characters_in_order_up_to_the_exit() {
        assert_eq!(
            deltas(&record(), [0, 0]).await,
            [
                ("stdout", "h".to_string(), 1),
                ("stdout", "éllo ".to_string(), 6),
                ("stderr", "oops".to_string(), 4),
                ("stdout", "world".to_string(), 5),
            ]
        );
    }

    #[test]
    fn a_containers_log_is_read_from_just_before_the_run_and_a_pods_up_to_a_record() {
        use codeinterp_crds::{CodeRunSpec, Language};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        use k8s_openapi::jiff::Timestamp;
        let mut run = CodeRun::new(
            "run-a",
            CodeRunSpec {
                language: Language::Python,
                code: "print(1)".into(),
                stdin: None,
                args: vec![],
                files: vec![],
                limits: Default::default(),
                ttl_seconds_after_finished: None,
                cancel: None,
                container: None,
            },
        );
        run.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1000).unwrap()));
        let own = log_params(&run);
        assert_eq!(own.limit_bytes, Some(MAX_RECORD_BYTES as i64));
        assert_eq!(own.since_time, None);
        run.spec.container = Some("cntr-ab".into());
        let shared = log_params(&run);
        assert_eq!(shared.limit_bytes, None);
        assert_eq!(
            shared.since_time,
            Some(Timestamp::from_second(990).unwrap())
        );
        assert!(shared.follow && own.follow);
    }

    #[tokio::test]
    async fn a_resumed_stream_skips_the_bytes_the_client_has() {
        assert_eq!(
            deltas(&record(), [3, 2]).await,
            [
                ("stdout", "llo ".to_string(), 4),
                ("stderr", "ps".to_string(), 2),
                ("stdout", "world".to_string(), 5),
            ]
        );
    }
}
