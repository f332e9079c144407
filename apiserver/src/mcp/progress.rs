//! A run's live output as MCP progress notifications, from the very events the SSE endpoint
//! sends (`runs::events::follow`): each output delta is one notification whose message is
//! the text the program wrote; the run's phases (queued, started) are notifications too.
//! `progress` is the event's sequence number, so it grows with every notification, and no
//! `total` is given (a run's length is not known ahead).
use futures::{Stream, StreamExt};
use rmcp::Peer;
use rmcp::RoleServer;
use rmcp::model::{ProgressNotificationParam, ProgressToken};
use tokio::time::Instant;

use crate::runs::events::RunEvent;

/// What a notification says of an event; `None` for the events that end the stream (the
/// result says it) and those with nothing to tell.
pub fn message(event: &RunEvent) -> Option<(u64, String)> {
    match event {
        RunEvent::Queued {
            sequence_number,
            queue_position: Some(position),
            ..
        } => Some((
            *sequence_number,
            format!("waiting for room: number {position} in line"),
        )),
        RunEvent::InProgress {
            sequence_number, ..
        } => Some((*sequence_number, "the program is running".into())),
        RunEvent::OutputDelta {
            sequence_number,
            delta,
            ..
        } => Some((*sequence_number, delta.clone())),
        _ => None,
    }
}

fn is_terminal(event: &RunEvent) -> bool {
    matches!(
        event,
        RunEvent::Completed { .. }
            | RunEvent::Failed { .. }
            | RunEvent::TimedOut { .. }
            | RunEvent::Cancelled { .. }
    )
}

/// Sends the run's events as progress until it ends, the client goes away, or the call's
/// deadline passes (the result then tells how far the run got).
pub async fn forward(
    events: impl Stream<Item = RunEvent>,
    token: ProgressToken,
    peer: &Peer<RoleServer>,
    deadline: Instant,
) {
    let sending = async {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            if is_terminal(&event) {
                return;
            }
            let Some((sequence, text)) = message(&event) else {
                continue;
            };
            let note = ProgressNotificationParam::new(token.clone(), (sequence + 1) as f64)
                .with_message(text);
            if peer.notify_progress(note).await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, sending).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_told_as_written_and_the_end_is_left_to_the_result() {
        let delta = RunEvent::OutputDelta {
            sequence_number: 4,
            run_id: "run-a".into(),
            stream: "stdout".into(),
            delta: "hello\n".into(),
        };
        assert_eq!(message(&delta), Some((4, "hello\n".to_string())));
        let queued = RunEvent::Queued {
            sequence_number: 1,
            run_id: "run-a".into(),
            queue_position: None,
        };
        assert_eq!(message(&queued), None);
        let waiting = RunEvent::Queued {
            sequence_number: 1,
            run_id: "run-a".into(),
            queue_position: Some(3),
        };
        assert!(message(&waiting).unwrap().1.contains('3'));
        assert!(!is_terminal(&delta));
    }
}
