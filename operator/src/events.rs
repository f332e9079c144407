//! Events for `kubectl describe`, written a moment after the step they record: a short run
//! is answered before any of its events is written, so they add no API load to its critical
//! path (a long run's events still show within a second). One task writes them all, in the
//! order they were recorded, each once its delay has passed.
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
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
    /// Writes each event once it is due, until every [`Events`] handle is gone.
    pub async fn write(mut self, recorder: Recorder) {
        while let Some(due) = self.0.recv().await {
            sleep_until(due.at).await;
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
