//! A run in a container: its job goes down the container's line as a `run` operation (its
//! payload in data lines), and its record comes back on the same line, between `run` and
//! `end`: output as the program writes it, its exit, then the files it created or changed
//! in the container's folder (streamed into object storage as they come, like a one-shot
//! run's output files) and the ones it removed. The run then ends through the same finish
//! as any run, and the container's folder in storage follows what the run did.
use codeinterp_crds::{CodeContainer, CodeRun, Reason, StartMode};
use codeinterp_store::{ContainerFile, FileSource};
use kube::ResourceExt;
use kube::runtime::events::EventType;
use runner_protocol::{Decoder, Event, Frame, Op, Record};
use tokio::time::{Duration, Instant};

use super::line::{Line, LineError, Read};
use crate::Error;
use crate::artifacts::StoredFile;
use crate::context::Context;
use crate::outcome::{Outcome, judge};
use crate::steps::finish;

/// Runs `run` in the container and ends it; `Err` only when the line broke (the run is then
/// resumed on the next line, from the container's replay).
pub async fn run(
    ctx: &Context,
    container: &CodeContainer,
    line: &mut Line,
    run: &CodeRun,
) -> Result<(), LineError> {
    let uid = run.uid().unwrap_or_default();
    let inputs = match crate::inputs::for_run(ctx, run).await {
        Ok(inputs) => inputs,
        Err(refusal) => {
            let outcome = Outcome::ended(refusal.reason, refusal.message);
            end_quietly(finish::end(ctx, run, None, outcome).await);
            return Ok(());
        }
    };
    let mut payload = Vec::with_capacity(inputs.job.payload_bytes() as usize);
    if let Err(e) = inputs.write_body(&ctx.store, &mut payload).await {
        let outcome = Outcome::ended(Reason::InvalidInput, format!("reading the inputs: {e}"));
        end_quietly(finish::end(ctx, run, None, outcome).await);
        return Ok(());
    }
    let op = Op::Run {
        id: uid.clone(),
        job: inputs.job.clone(),
    };
    line.send(&op, Some(&payload)).await?;
    ctx.record(
        run,
        EventType::Normal,
        "Started",
        "Run",
        &format!("the job was handed to container {}", container.name_any()),
    );
    read(ctx, container, line, run).await
}

/// Reads the run's record from the line (from its `run` frame to `end`) and ends the run.
/// A run that goes on past a moment is shown Running first (a quick one gets one write).
pub async fn read(
    ctx: &Context,
    container: &CodeContainer,
    line: &mut Line,
    run: &CodeRun,
) -> Result<(), LineError> {
    let uid = run.uid().unwrap_or_default();
    let container_uid = container.uid().unwrap_or_default();
    ctx.index.container_busy(&container_uid, Some(&uid));
    let shown_at = Instant::now() + RUNNING_GRACE;
    let pod = line.pod.clone();
    let running = write_running(ctx, run, &pod, shown_at);
    let mut running = std::pin::pin!(running);
    let mut written = None;
    let record = {
        let reading = record(ctx, &container_uid, line, run);
        let mut reading = std::pin::pin!(reading);
        loop {
            tokio::select! {
                record = &mut reading => break record,
                w = &mut running, if written.is_none() => written = Some(w),
            }
        }
    };
    // A write in flight lands before the final one is made.
    if written.is_none() && Instant::now() >= shown_at {
        written = Some(running.await);
    }
    ctx.index.container_busy(&container_uid, None);
    let (record, files) = record?;
    let outcome = match &record {
        Ok(rec) => verdict(rec, run.cancel_requested()),
        Err(e) => Outcome::ended(Reason::InvalidRunnerOutput, e.to_string()),
    };
    let record = record.ok();
    // The folder first: whoever reads the run as finished finds the files it wrote listed.
    keep_folder(ctx, container, record.as_ref(), &files).await;
    let latest = written.flatten().unwrap_or_else(|| run.clone());
    let done = finish::from_record(ctx, &latest, None, record.as_ref(), &files, outcome).await;
    end_quietly(done);
    Ok(())
}

/// How long a run goes before it is shown Running.
const RUNNING_GRACE: Duration = Duration::from_millis(100);

/// Shows the run Running in the container's pod, at `at`; the run as written.
async fn write_running(ctx: &Context, run: &CodeRun, pod: &str, at: Instant) -> Option<CodeRun> {
    tokio::time::sleep_until(at).await;
    let api = ctx.runs_api(&run.namespace().unwrap_or_default());
    let applied = ctx.isolation().unwrap_or_default();
    let generation = run.metadata.generation;
    let build = |s| crate::status::running(s, pod, StartMode::Container, &applied, generation);
    match crate::kube_io::update_status(&api, run, build).await {
        Ok((run, _)) => Some(run),
        Err(e) => {
            tracing::warn!(error = %e, "writing the Running status");
            None
        }
    }
}

/// What a container run's record comes to: as a one-shot run's, and an interpreter lost
/// (restarted for the next run) says so with its own reason. A run the container had been
/// handed before (by a leader that went away before it read the run's end) was not run
/// again: its record is lost.
fn verdict(rec: &Record, cancelled: bool) -> Outcome {
    if rec.exit.as_ref().is_some_and(|e| e.already_ran) {
        return Outcome::ended(
            Reason::RecordLost,
            "the operator changed leaders as the run ended in the container: it ran once, \
             and what it printed and wrote could not be read back",
        );
    }
    let mut outcome = judge(Some(rec), None, None, cancelled);
    if let Some(exit) = rec.exit.as_ref().filter(|e| e.interpreter_lost) {
        let why = exit
            .error
            .clone()
            .unwrap_or_else(|| "the interpreter ended".into());
        outcome = Outcome {
            usage: outcome.usage,
            exit_code: outcome.exit_code,
            signal: outcome.signal,
            ..Outcome::ended(Reason::InterpreterLost, why)
        };
    }
    outcome
}

type Decoded = (Result<Record, runner_protocol::ParseError>, Vec<StoredFile>);

/// The run's record: the frames between its `run` and `end`, its files stored as they come,
/// an interrupt passed on if one is asked for while it runs.
async fn record(
    ctx: &Context,
    container_uid: &str,
    line: &mut Line,
    run: &CodeRun,
) -> Result<Decoded, LineError> {
    let uid = run.uid().unwrap_or_default();
    let mut decoder = Decoder::streaming(&ctx.limits(run));
    let mut files = crate::artifacts::for_run(ctx, run);
    let wake = ctx.index.container_wake(container_uid);
    let mut ours = false;
    let deadline = Instant::now()
        + Duration::from_millis(ctx.limits(run).timeout_ms)
        + Duration::from_secs(ctx.cfg().deadline_slack_seconds + 60);
    loop {
        let read = tokio::select! {
            read = line.next() => read?,
            _ = wake.notified() => {
                if ctx.index.take_interrupt(container_uid, &uid) {
                    line.send(&Op::Interrupt { id: uid.clone() }, None).await?;
                }
                continue;
            }
            _ = tokio::time::sleep_until(deadline) => return Err(LineError::Silent),
        };
        let Read::Frame(frame, raw) = read else {
            continue;
        };
        match frame {
            Frame::Run { id } => ours = id == uid,
            Frame::Sync { .. } | Frame::Ack { .. } => {}
            _ if !ours => {}
            frame => {
                let events = decoder.push(&raw).unwrap_or_default();
                for event in &events {
                    files.take(event).await;
                }
                if matches!(frame, Frame::End) || events.contains(&Event::End) {
                    break;
                }
            }
        }
    }
    Ok((decoder.finish(), files.finish().await))
}

/// The container's folder in storage follows the run: the files it wrote are there (as the
/// run's output files), the ones it removed are gone.
async fn keep_folder(
    ctx: &Context,
    container: &CodeContainer,
    record: Option<&Record>,
    files: &[StoredFile],
) {
    let tenant = container.tenant_in(ctx.settings.sandbox_namespace());
    let name = container.name_any();
    let now = crate::status::now().0.as_second();
    for file in files {
        let entry = ContainerFile {
            id: file.id.clone(),
            container: name.clone(),
            tenant: tenant.clone(),
            path: file.name.clone(),
            bytes: file.bytes,
            created_at: now,
            source: FileSource::Assistant,
        };
        if let Err(e) = ctx.store.put_container_file(&entry).await {
            tracing::warn!(container = %name, error = %e, "recording a container's file");
        }
    }
    for removed in record.map(|r| r.removed.as_slice()).unwrap_or_default() {
        if let Err(e) = ctx
            .store
            .remove_container_file(&tenant, &name, removed)
            .await
        {
            tracing::warn!(container = %name, error = %e, "removing a container's file");
        }
    }
}

/// A run that could not be ended now is ended by its next reconcile.
fn end_quietly(done: Result<(), Error>) {
    if let Err(e) = done {
        tracing::warn!(error = %e, "ending a container's run; its reconcile tries again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_protocol::ExitReport;

    #[test]
    fn a_run_the_container_was_handed_before_is_lost_never_judged_as_run() {
        let refused = Record {
            started: true,
            complete: true,
            exit: Some(ExitReport {
                error: Some("run \"r\" was handed over before".into()),
                already_ran: true,
                ..ExitReport::default()
            }),
            ..Record::default()
        };
        let outcome = verdict(&refused, false);
        assert_eq!(outcome.reason, Some(Reason::RecordLost));
        let message = outcome.message.unwrap_or_default();
        assert!(message.contains("it ran once"), "{message}");
    }
}
