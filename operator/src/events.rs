//! Events for `kubectl describe`, written a moment after the step they record: a short run
//! is answered before any of its events is written, so they add no API load to its critical
//! path (a long run's events still show within a second). One task writes them all, in the
//! order they were recorded, each once its delay has passed.
//!
//! Each event is published through a recorder of its own. kube's `Recorder` keeps every
//! event it wrote for six minutes, to count repeats as a series, and scans that whole cache
//! on every publish: with thousands of runs an hour the scan grew with the event rate, and
//! in the 10,000-run scale round it was 7 % of the operator's CPU (perf). Ours are one event
//! per step of a run, not repeats worth a series, so nothing is kept between them.
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant, sleep_until};

/// How long after a step its event is written.
pub const DELAY: Duration = Duration::from_secs(1);
/// Most characters of an event's note.
const NOTE_CHARS: usize = 1000;

struct Due {
    at: Instant,
    event: Event,
    reference: ObjectReference,
}

/// Where steps record their events.
#[derive(Clone)]
pub struct Events(mpsc::UnboundedSender<Due>);

/// The other end: the writer's queue.
pub struct EventQueue(mpsc::UnboundedReceiver<Due>);

pub fn channel() -> (Events, EventQueue) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Events(tx), EventQueue(rx))
}

impl Events {
    /// Records an event about `reference`, written [`DELAY`] from now.
    pub fn record(
        &self,
        reference: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(NOTE_CHARS).collect()),
            action: action.into(),
            secondary: None,
        };
        // The writer only stops with the process.
        let _ = self.0.send(Due {
            at: Instant::now() + DELAY,
            event,
            reference,
        });
    }
}

impl EventQueue {
    /// Writes each event once it is due, until every [`Events`] handle is gone, each
    /// through a recorder of its own (see the module's comment).
    pub async fn write(mut self, client: Client, reporter: Reporter) {
        while let Some(due) = self.0.recv().await {
            sleep_until(due.at).await;
            let recorder = Recorder::new(client.clone(), reporter.clone());
            if let Err(e) = recorder.publish(&due.event, &due.reference).await {
                tracing::warn!(reason = %due.event.reason, error = %e, "could not publish an event");
            }
        }
    }

    /// The next event once it is due (for tests: the reason and note).
    #[cfg(test)]
    pub async fn next_due(&mut self) -> Option<(String, String)> {
        let due = self.0.recv().await?;
        sleep_until(due.at).await;
        Some((due.event.reason, due.event.note.unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A Kubernetes API that answers every request with what it was sent, and notes each
    /// request's method and path.
    fn recording_api() -> (Client, Arc<Mutex<Vec<String>>>) {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let noted = seen.clone();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let noted = noted.clone();
            async move {
                noted
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", req.method(), req.uri().path()));
                let body = req.into_body().collect_bytes().await.unwrap();
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(201)
                        .body(kube::client::Body::from(body.to_vec()))
                        .unwrap(),
                )
            }
        });
        (Client::new(service, "codeinterp"), seen)
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_keeps_no_event_it_wrote_so_a_repeat_is_created_not_patched() {
        // kube's Recorder keeps what it wrote (and scans it all on every publish) to patch a
        // repeat into a series; a writer that kept its recorder would PATCH the second one.
        let (client, seen) = recording_api();
        let (events, queue) = channel();
        let run = ObjectReference {
            api_version: Some("codeinterp.dev/v1alpha1".into()),
            kind: Some("CodeRun".into()),
            name: Some("run-a".into()),
            namespace: Some("codeinterp".into()),
            uid: Some("u-1".into()),
            ..Default::default()
        };
        for _ in 0..2 {
            events.record(
                run.clone(),
                EventType::Normal,
                "PodCreated",
                "CreatePod",
                "same",
            );
        }
        drop(events);
        let reporter = Reporter {
            controller: "codeinterp-operator".into(),
            instance: Some("test".into()),
        };
        queue.write(client, reporter).await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec!["POST /apis/events.k8s.io/v1/namespaces/codeinterp/events"; 2]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_written_in_order_a_delay_after_their_step() {
        let (events, mut queue) = channel();
        let t = Instant::now();
        events.record(Default::default(), EventType::Normal, "A", "x", "first");
        tokio::time::advance(Duration::from_millis(300)).await;
        events.record(
            Default::default(),
            EventType::Normal,
            "B",
            "x",
            &"n".repeat(5000),
        );
        assert_eq!(queue.next_due().await.unwrap().0, "A");
        assert_eq!(t.elapsed(), DELAY);
        let (reason, note) = queue.next_due().await.unwrap();
        assert_eq!((reason.as_str(), note.len()), ("B", NOTE_CHARS));
        assert_eq!(t.elapsed(), DELAY + Duration::from_millis(300));
    }
}
