//! A run as MCP content, for a model to read: one text block with the status, exit code,
//! reason, stdout and stderr; each output file that is an image (judged by its bytes when it
//! was stored, as the REST API serves it) as an image; every other output file as a
//! resource link to its signed URL (the run object's `artifacts[].url`). The run object
//! itself goes along as structured content. A run that did not complete with exit code 0 is
//! an error result.
use std::fmt::Write as _;

use base64::Engine as _;
use futures::TryStreamExt;
use k8s_openapi::jiff::Timestamp;
use rmcp::model::{CallToolResult, ContentBlock, Resource};
use serde::Serialize;

use crate::files::model::display_type;
use crate::pagination::Page;
use crate::runs::model::{Artifact, Run, RunStatus};
use crate::runs::service::Answer;
use crate::state::AppState;

/// Images larger than this are linked, not inlined: clients and models take images of a
/// few MiB at most, and a result is held whole in memory.
const IMAGE_INLINE_BYTES: u64 = 4 * 1024 * 1024;
/// Images inlined in one result together, at most; the rest are linked.
const IMAGES_INLINE_TOTAL: u64 = 8 * 1024 * 1024;

/// The run object of an answer.
pub fn run_of(state: &AppState, answer: Answer) -> Run {
    match answer {
        Answer::Live(run) => *run,
        Answer::Done(prepared) => prepared.to_run(&state.links()),
    }
}

/// Whether the run is a failure for the model: anything but a program that exited 0.
pub fn failed(run: &Run) -> bool {
    match run.status {
        RunStatus::Completed => run.exit_code != Some(0),
        RunStatus::Queued | RunStatus::Running => false,
        RunStatus::TimedOut | RunStatus::Failed | RunStatus::Cancelled => true,
    }
}

fn when(unix: i64) -> String {
    Timestamp::from_second(unix).map_or_else(|_| unix.to_string(), |t| t.to_string())
}

/// The first line: what happened.
fn headline(run: &Run) -> String {
    let what = match (run.status, run.exit_code, run.signal) {
        (RunStatus::Queued | RunStatus::Running, ..) => format!(
            "is still {}; call get_run with run_id \"{}\" for its result",
            run.status.as_str(),
            run.id
        ),
        (status, Some(code), _) => format!("{}, exit code {code}", status.as_str()),
        (status, None, Some(signal)) => format!("{}, killed by signal {signal}", status.as_str()),
        (status, None, None) => status.as_str().to_string(),
    };
    format!("Run {} ({}) {what}.", run.id, run.language)
}

fn stream(out: &mut String, name: &str, text: &str, truncated: bool) {
    if text.is_empty() {
        let _ = writeln!(out, "--- {name}: (empty) ---");
        return;
    }
    let _ = writeln!(out, "--- {name} ---");
    out.push_str(text);
    if !text.ends_with('\n') {
        out.push('\n');
    }
    if truncated {
        let _ = writeln!(out, "[{name} was cut at the run's output limit]");
    }
}

/// The text block: what a model needs to know of the run.
pub fn summary(run: &Run) -> String {
    let mut out = headline(run);
    out.push('\n');
    if let Some(error) = &run.error {
        let _ = writeln!(out, "Reason: {} ({})", error.message, error.code);
    }
    if run.status.is_terminal() {
        let u = &run.usage;
        let _ = writeln!(
            out,
            "Usage: {} ms wall clock, {} ms CPU, {:.1} MiB peak memory.",
            u.wall_ms,
            u.cpu_ms,
            u.memory_peak_bytes as f64 / (1024.0 * 1024.0)
        );
    }
    stream(&mut out, "stdout", &run.stdout, run.stdout_truncated);
    stream(&mut out, "stderr", &run.stderr, run.stderr_truncated);
    if let Some(first) = run.artifacts.first() {
        let _ = writeln!(
            out,
            "Output files (links work without a key until {}):",
            when(first.expires_at)
        );
        for a in &run.artifacts {
            let _ = writeln!(out, "- {} ({} bytes): {}", a.filename, a.bytes, a.url);
        }
    }
    out
}

/// An output file as an image, when it is one, small enough and readable, and the result
/// has room for it; otherwise a link to it.
async fn artifact(state: &AppState, tenant: &str, a: &Artifact, room: bool) -> ContentBlock {
    if room && let Some(image) = image(state, tenant, a).await {
        return image;
    }
    ContentBlock::resource_link(
        Resource::new(a.url.clone(), a.filename.clone())
            .with_size(a.bytes)
            .with_description(format!(
                "An output file of the run; the link works without a key until {}",
                when(a.expires_at)
            )),
    )
}

async fn image(state: &AppState, tenant: &str, a: &Artifact) -> Option<ContentBlock> {
    if a.bytes > IMAGE_INLINE_BYTES {
        return None;
    }
    let meta = state.store.get_file_meta(tenant, &a.id).await.ok()??;
    let mime = display_type(&meta)?;
    let read = async {
        let chunks = state.store.get_file_content(tenant, &a.id).await?;
        chunks
            .try_fold(Vec::new(), |mut bytes, chunk| async move {
                bytes.extend_from_slice(&chunk);
                Ok(bytes)
            })
            .await
    };
    match read.await {
        Ok(bytes) => Some(ContentBlock::image(
            base64::engine::general_purpose::STANDARD.encode(&bytes),
            mime,
        )),
        Err(e) => {
            tracing::warn!(file = %a.id, error = %e, "reading an output image; linking it instead");
            None
        }
    }
}

/// The result of a run: text, its output files, and the run object.
pub async fn result(state: &AppState, tenant: &str, run: Run) -> CallToolResult {
    let mut blocks = vec![ContentBlock::text(summary(&run))];
    let mut inlined = 0;
    for a in &run.artifacts {
        let room = inlined + a.bytes <= IMAGES_INLINE_TOTAL;
        let block = artifact(state, tenant, a, room).await;
        if matches!(block, ContentBlock::Image(_)) {
            inlined += a.bytes;
        }
        blocks.push(block);
    }
    let mut result = if failed(&run) {
        CallToolResult::error(blocks)
    } else {
        CallToolResult::success(blocks)
    };
    result.structured_content = serde_json::to_value(&run).ok();
    result
}

/// A run in a list: enough to choose which to get.
#[derive(Debug, Serialize)]
struct Listed<'a> {
    id: &'a str,
    status: &'static str,
    language: &'a str,
    created_at: String,
    exit_code: Option<i32>,
    error: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Listing<'a> {
    runs: Vec<Listed<'a>>,
    has_more: bool,
    last_id: Option<&'a str>,
}

/// A page of runs, as JSON text and structured content.
pub fn page(page: &Page<Run>) -> CallToolResult {
    let listing = Listing {
        runs: page
            .data
            .iter()
            .map(|r| Listed {
                id: &r.id,
                status: r.status.as_str(),
                language: &r.language,
                created_at: when(r.created_at),
                exit_code: r.exit_code,
                error: r.error.as_ref().map(|e| e.code.as_str()),
            })
            .collect(),
        has_more: page.has_more,
        last_id: page.last_id.as_deref(),
    };
    let value = serde_json::to_value(&listing).unwrap_or_default();
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(value);
    result
}
