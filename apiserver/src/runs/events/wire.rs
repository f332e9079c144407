//! What goes over the wire: the events of a run's stream, the cursor every event's id is,
//! and the one place where an event is numbered and the cursor moved past it.
use axum::response::sse;
use runner_protocol::Stream as OutputKind;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use crate::runs::model::{Artifact, Run, RunStatus};

/// One event of a run's stream (the `data` of each server-sent event; its `event` is the
/// `type`). The runs inside events carry at most the first 4 KiB of stdout and stderr: the
/// output itself comes once, in `run.output.delta` events.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type")]
pub enum RunEvent {
    /// First: the run as created.
    #[serde(rename = "run.created")]
    Created { sequence_number: u64, run: Box<Run> },
    /// The run waits for its program to start; its place in line, if it waits for room.
    #[serde(rename = "run.queued")]
    Queued {
        sequence_number: u64,
        run_id: String,
        queue_position: Option<u32>,
    },
    /// The program has started.
    #[serde(rename = "run.in_progress")]
    InProgress { sequence_number: u64, run: Box<Run> },
    /// Output the program wrote (what is over `max_output_bytes` is not streamed).
    #[serde(rename = "run.output.delta")]
    OutputDelta {
        sequence_number: u64,
        run_id: String,
        /// `stdout` or `stderr`.
        stream: String,
        delta: String,
    },
    /// An output file, with its signed URL.
    #[serde(rename = "run.artifact")]
    Artifact {
        sequence_number: u64,
        run_id: String,
        artifact: Artifact,
    },
    #[serde(rename = "run.completed")]
    Completed { sequence_number: u64, run: Box<Run> },
    #[serde(rename = "run.failed")]
    Failed { sequence_number: u64, run: Box<Run> },
    #[serde(rename = "run.timed_out")]
    TimedOut { sequence_number: u64, run: Box<Run> },
    #[serde(rename = "run.cancelled")]
    Cancelled { sequence_number: u64, run: Box<Run> },
}

/// Every event name, as `event:` lines carry them.
pub const EVENT_NAMES: [&str; 9] = [
    "run.created",
    "run.queued",
    "run.in_progress",
    "run.output.delta",
    "run.artifact",
    "run.completed",
    "run.failed",
    "run.timed_out",
    "run.cancelled",
];

/// One server-sent event of a run's stream, as the schema of a `text/event-stream` response
/// describes it: the event's fields, not the JSON inside them. OpenAPI 3.2 says so of
/// `itemSchema`, and validators (schemathesis among them) read a 3.1 `schema` the same way:
/// they parse the stream into events (`event`, `id`, `data`) and check each one. A schema
/// of the JSON alone is why `run.created` failed validation: the parsed event had no
/// `type` or `sequence_number` of its own. `data` is a [`RunEvent`] as JSON, said with
/// JSON Schema's `contentMediaType` and `contentSchema`, which validators check too.
pub struct RunEventMessage;

impl utoipa::PartialSchema for RunEventMessage {
    fn schema() -> RefOr<Schema> {
        // utoipa has no `contentSchema`; its extensions map, filled directly (its builder
        // would prefix `x-`), writes the keyword as it is.
        let mut content_schema = Extensions::default();
        content_schema.insert(
            "contentSchema".into(),
            serde_json::json!({"$ref": "#/components/schemas/RunEvent"}),
        );
        let string = || ObjectBuilder::new().schema_type(Type::String);
        ObjectBuilder::new()
            .description(Some(
                "One server-sent event: `event` is the type of the `RunEvent` in `data` (JSON), `id` the cursor `Last-Event-ID` resumes after.",
            ))
            .property("event", string().enum_values(Some(EVENT_NAMES)))
            .property(
                "id",
                string().pattern(Some(r"^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$")),
            )
            .property(
                "data",
                string()
                    .content_media_type("application/json")
                    .extensions(Some(content_schema)),
            )
            .required("event")
            .required("id")
            .required("data")
            .into()
    }
}

impl utoipa::ToSchema for RunEventMessage {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        use utoipa::PartialSchema;
        schemas.push((<RunEvent as ToSchema>::name().into(), RunEvent::schema()));
        <RunEvent as ToSchema>::schemas(schemas);
    }
}

impl RunEvent {
    pub fn name(&self) -> &'static str {
        match self {
            RunEvent::Created { .. } => "run.created",
            RunEvent::Queued { .. } => "run.queued",
            RunEvent::InProgress { .. } => "run.in_progress",
            RunEvent::OutputDelta { .. } => "run.output.delta",
            RunEvent::Artifact { .. } => "run.artifact",
            RunEvent::Completed { .. } => "run.completed",
            RunEvent::Failed { .. } => "run.failed",
            RunEvent::TimedOut { .. } => "run.timed_out",
            RunEvent::Cancelled { .. } => "run.cancelled",
        }
    }

    fn terminal(run: Box<Run>, sequence_number: u64) -> Self {
        match run.status {
            RunStatus::Completed => RunEvent::Completed {
                sequence_number,
                run,
            },
            RunStatus::TimedOut => RunEvent::TimedOut {
                sequence_number,
                run,
            },
            RunStatus::Cancelled => RunEvent::Cancelled {
                sequence_number,
                run,
            },
            _ => RunEvent::Failed {
                sequence_number,
                run,
            },
        }
    }
}

/// An event as a stage of the stream makes it: not numbered yet.
#[derive(Debug)]
pub enum Emit {
    Created(Box<Run>),
    Queued {
        queue_position: Option<u32>,
    },
    InProgress(Box<Run>),
    /// `text` stands for the next `bytes` bytes of the stream (a character is never split).
    Output {
        stream: OutputKind,
        text: String,
        bytes: u64,
    },
    Artifact(Artifact),
    Terminal(Box<Run>),
    /// Not an event: the stream ends here, without a terminal event (the run is gone, or
    /// storage failed; a client resumes after the last event it got).
    Stop,
}

/// Where a client is in a run's events: how many it has had, how many bytes of each stream
/// and how many artifacts. The id of every event, and what `Last-Event-ID` gives back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub seq: u64,
    pub out: [u64; 2],
    pub artifacts: u64,
}

/// The stages whose events have fixed numbers: a stream resumed after one skips them.
pub const STAGE_CREATED: u64 = 0;
pub const STAGE_QUEUED: u64 = 1;
pub const STAGE_IN_PROGRESS: u64 = 2;

/// Which of `Cursor::out` counts a stream's bytes.
pub fn index(kind: OutputKind) -> usize {
    match kind {
        OutputKind::Stdout => 0,
        OutputKind::Stderr => 1,
    }
}

impl Cursor {
    pub fn id(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.seq, self.out[0], self.out[1], self.artifacts
        )
    }

    pub fn parse(s: &str) -> Option<Cursor> {
        let mut parts = s.trim().split('.').map(|p| p.parse::<u64>().ok());
        let c = Cursor {
            seq: parts.next()??,
            out: [parts.next()??, parts.next()??],
            artifacts: parts.next()??,
        };
        parts.next().is_none().then_some(c)
    }

    /// Numbers the event, moves the cursor past it, and makes it a server-sent event whose
    /// id is the cursor after it; `None` for `Emit::Stop`. Every event of a stream goes
    /// through here, in order.
    pub fn stamp(&mut self, emit: Emit, run_id: &str) -> Option<sse::Event> {
        let event = self.advance(emit, run_id)?;
        let event = sse::Event::default()
            .event(event.name())
            .id(self.id())
            .json_data(&event)
            .expect("events serialize");
        Some(event)
    }

    /// Numbers the event and moves the cursor past it; `None` for `Emit::Stop`.
    pub fn advance(&mut self, emit: Emit, run_id: &str) -> Option<RunEvent> {
        let sequence_number = self.seq;
        let run_id = run_id.to_string();
        let event = match emit {
            Emit::Stop => return None,
            Emit::Created(run) => RunEvent::Created {
                sequence_number,
                run,
            },
            Emit::Queued { queue_position } => RunEvent::Queued {
                sequence_number,
                run_id,
                queue_position,
            },
            Emit::InProgress(run) => RunEvent::InProgress {
                sequence_number,
                run,
            },
            Emit::Output {
                stream,
                text,
                bytes,
            } => {
                self.out[index(stream)] += bytes;
                RunEvent::OutputDelta {
                    sequence_number,
                    run_id,
                    stream: stream.as_str().into(),
                    delta: text,
                }
            }
            Emit::Artifact(artifact) => {
                self.artifacts += 1;
                RunEvent::Artifact {
                    sequence_number,
                    run_id,
                    artifact,
                }
            }
            Emit::Terminal(run) => RunEvent::terminal(run, sequence_number),
        };
        self.seq += 1;
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_junk_is_no_cursor() {
        let c = Cursor {
            seq: 7,
            out: [10, 3],
            artifacts: 1,
        };
        assert_eq!(Cursor::parse(&c.id()), Some(c));
        for junk in ["", "1.2.3", "a.b.c.d", "1.2.3.4.5", "-1.0.0.0"] {
            assert_eq!(Cursor::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn each_event_takes_the_next_number_and_moves_the_cursor_past_what_it_carries() {
        let mut c = Cursor {
            seq: 3,
            out: [10, 0],
            artifacts: 0,
        };
        let delta = Emit::Output {
            stream: OutputKind::Stderr,
            text: "é!".into(),
            bytes: 3,
        };
        c.stamp(delta, "run-a");
        assert_eq!(c.id(), "4.10.3.0");
        let artifact = Artifact {
            id: "file-1".into(),
            filename: "a.png".into(),
            bytes: 1,
            url: "u".into(),
            expires_at: 1,
        };
        c.stamp(Emit::Artifact(artifact), "run-a");
        c.stamp(
            Emit::Queued {
                queue_position: None,
            },
            "run-a",
        );
        assert_eq!(c.id(), "6.10.3.1");
        assert!(c.stamp(Emit::Stop, "run-a").is_none());
        assert_eq!(c.id(), "6.10.3.1");
    }
}
