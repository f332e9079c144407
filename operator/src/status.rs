//! Building a run's status (pure) and writing it. Whatever bytes a program prints end up in
//! the status only as a preview made safe to show, and the request that carries the status
//! escapes every character the API server's YAML parser refuses, so no output can make a
//! status write fail. A write the API server still refuses for good ends the run with a
//! minimal `status_rejected` status instead of a retry loop.
use codeinterp_crds::{
    Applied, ArtifactRef, CodeRun, CodeRunStatus, ConditionReason, ConditionType, Phase, Reason,
    StartMode,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::Error;
use crate::outcome::Outcome;

/// Field manager for everything the operator applies.
pub const MANAGER: &str = "codeinterp-operator";
/// Bytes of stdout and stderr shown in the status.
pub const PREVIEW_BYTES: usize = 4096;

pub fn now() -> Time {
    Time(Timestamp::now())
}

/// The start of a stream's output, for people reading `kubectl get -o yaml`: control
/// characters other than newline and tab (terminal escapes, C1 controls) become U+FFFD.
pub fn safe_preview(bytes: &[u8]) -> String {
    codeinterp_store::head(bytes, PREVIEW_BYTES)
        .chars()
        .map(|c| {
            if (c.is_control() && c != '\n' && c != '\t') || is_noncharacter(c) {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

fn is_noncharacter(c: char) -> bool {
    matches!(c as u32, 0xFDD0..=0xFDEF) || (c as u32 & 0xFFFE) == 0xFFFE
}

/// JSON whose every character is also acceptable to a YAML parser: the API server parses an
/// apply patch as YAML, which refuses DEL, the C1 controls and non-characters even inside
/// quoted strings, while serde_json leaves them raw. They can only occur inside strings, so
/// writing them as `\uXXXX` escapes keeps the same JSON value.
pub fn yaml_safe_json<T: Serialize>(value: &T) -> String {
    let raw = serde_json::to_string(value).expect("a status serializes");
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let code = c as u32;
        if code == 0x7F || (0x80..=0x9F).contains(&code) || code == 0xFEFF || is_noncharacter(c) {
            out.push_str(&format!("\\u{code:04x}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// The apply patch that sets the whole status, guarded by the run's resourceVersion when
/// given (the write fails with a conflict if the run changed since it was read).
pub fn apply_body(status: &CodeRunStatus, resource_version: Option<&str>) -> Box<RawValue> {
    let mut patch = serde_json::json!({
        "apiVersion": "codeinterp.dev/v1alpha1",
        "kind": "CodeRun",
        "status": status,
    });
    if let Some(rv) = resource_version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    RawValue::from_string(yaml_safe_json(&patch)).expect("valid JSON stays valid")
}

/// Writes the status of the run as read (`run`'s resourceVersion guards the write) and
/// returns the run as it is then. A conflict is [`Error::Conflict`]; a refusal for good is
/// turned into a minimal failed status, unless the run is gone (deleted meanwhile: nothing
/// is left to fail, and a second write would only be refused again).
pub async fn write(
    api: &Api<CodeRun>,
    run: &CodeRun,
    status: &CodeRunStatus,
) -> Result<CodeRun, Error> {
    let name = run.name_any();
    let params = PatchParams::apply(MANAGER).force();
    let body = apply_body(status, run.resource_version().as_deref());
    match api.patch_status(&name, &params, &Patch::Apply(&body)).await {
        Ok(updated) => Ok(updated),
        Err(kube::Error::Api(s)) if s.is_not_found() => Err(kube::Error::Api(s).into()),
        Err(e) if crate::refused_for_good(&e) && status.reason != Some(Reason::StatusRejected) => {
            tracing::warn!(run = %name, error = %e, "the API server refused the status; failing the run");
            let minimal = rejected(status, &e.to_string());
            let body = apply_body(&minimal, None);
            Ok(api
                .patch_status(&name, &params, &Patch::Apply(&body))
                .await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// What is left of a status the API server refused: the phase Failed and why, nothing the
/// program wrote.
pub fn rejected(status: &CodeRunStatus, why: &str) -> CodeRunStatus {
    let mut minimal = CodeRunStatus {
        phase: Some(Phase::Failed),
        reason: Some(Reason::StatusRejected),
        message: Some(format!(
            "the run's status could not be recorded: {}",
            safe_preview(why.as_bytes())
        )),
        started_at: status.started_at.clone(),
        completed_at: Some(now()),
        pod_name: status.pod_name.clone(),
        record_key: status.record_key.clone(),
        ..Default::default()
    };
    minimal.set_condition(
        ConditionType::Finished,
        true,
        ConditionReason::Ended(Phase::Failed),
        "the run's status could not be recorded",
        &now(),
    );
    minimal
}

/// Waiting for room, at this place in line.
pub fn queued(mut status: CodeRunStatus, position: u32, why: &str) -> CodeRunStatus {
    status.phase = Some(Phase::Queued);
    status.queue_position = Some(position);
    status.set_condition(
        ConditionType::Admitted,
        false,
        ConditionReason::WaitingForCapacity,
        why,
        &now(),
    );
    status
}

/// Where the program ran: its pod, how the run got it, and the isolation applied.
pub fn ran_in(
    mut status: CodeRunStatus,
    pod_name: &str,
    mode: StartMode,
    applied: &Applied,
) -> CodeRunStatus {
    let t = now();
    status.queue_position = None;
    status.pod_name = Some(pod_name.to_string());
    status.start_mode = Some(mode);
    status.applied = Some(applied.clone());
    let how = match mode {
        StartMode::Warm => ConditionReason::PodClaimed,
        StartMode::Cold => ConditionReason::PodCreated,
        StartMode::Container => ConditionReason::ContainerPod,
    };
    status.set_condition(
        ConditionType::Admitted,
        true,
        ConditionReason::Admitted,
        "the run was given room",
        &t,
    );
    status.set_condition(ConditionType::PodReady, true, how, pod_name, &t);
    status
}

/// The job was handed to the pod and the program runs.
pub fn running(
    status: CodeRunStatus,
    pod_name: &str,
    mode: StartMode,
    applied: &Applied,
    generation: Option<i64>,
) -> CodeRunStatus {
    let mut status = ran_in(status, pod_name, mode, applied);
    let t = now();
    status.phase = Some(Phase::Running);
    status.started_at.get_or_insert_with(|| t.clone());
    status.observed_generation = generation;
    status.set_condition(
        ConditionType::Started,
        true,
        ConditionReason::ProgramStarted,
        "the job was handed to the runner",
        &t,
    );
    status
}

/// The run's pod never got its job: it is given a new one (nothing ran).
pub fn restarted(mut status: CodeRunStatus, pod_name: &str, why: &str) -> CodeRunStatus {
    status.phase = Some(Phase::Queued);
    status.restarts += 1;
    status.pod_name = None;
    status.start_mode = None;
    status.set_condition(
        ConditionType::PodReady,
        false,
        ConditionReason::PodReplaced,
        &format!("{pod_name}: {why}"),
        &now(),
    );
    status
}

/// What the run's output looked like, for the status.
#[derive(Clone, Debug, Default)]
pub struct Output<'a> {
    pub stdout: &'a [u8],
    pub stderr: &'a [u8],
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// The final status.
pub fn finished(
    mut status: CodeRunStatus,
    outcome: &Outcome,
    output: Option<Output<'_>>,
    artifacts: Vec<ArtifactRef>,
    record_key: Option<String>,
    completed_at: Time,
) -> CodeRunStatus {
    status.phase = Some(outcome.phase);
    status.reason = outcome.reason;
    status.message = outcome
        .message
        .as_deref()
        .map(|m| safe_preview(m.as_bytes()));
    status.queue_position = None;
    status.exit_code = outcome.exit_code;
    status.signal = outcome.signal;
    status.preloaded = outcome.preloaded;
    if let Some(usage) = &outcome.usage {
        status.duration = Some(format!("{:.2}s", usage.wall_ms as f64 / 1000.0));
        status.usage = Some(usage.clone());
    }
    if status.started_at.is_none()
        && let Some(usage) = &outcome.usage
    {
        // A program that ended before its Running status was due: it started its wall time
        // before it ended.
        let started = completed_at.0.as_millisecond() - usage.wall_ms as i64;
        status.started_at = k8s_openapi::jiff::Timestamp::from_millisecond(started)
            .ok()
            .map(Time);
    }
    status.completed_at = Some(completed_at.clone());
    if let Some(out) = output {
        status.stdout_preview = Some(safe_preview(out.stdout));
        status.stderr_preview = Some(safe_preview(out.stderr));
        status.stdout_truncated = out.stdout_truncated;
        status.stderr_truncated = out.stderr_truncated;
    }
    status.artifacts = artifacts;
    status.record_key = record_key;
    let message = outcome
        .message
        .clone()
        .unwrap_or_else(|| format!("exit code {}", outcome.exit_code.unwrap_or(-1)));
    status.set_condition(
        ConditionType::Finished,
        true,
        ConditionReason::Ended(outcome.phase),
        &safe_preview(message.as_bytes()),
        &completed_at,
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// The API server turns an apply patch into an object with a YAML parser (libyaml's
    /// rules, which serde_yaml follows too): what it refuses, it refuses here.
    fn as_the_api_server_reads_it(body: &RawValue) -> serde_json::Value {
        let yaml: serde_yaml::Value = serde_yaml::from_str(body.get())
            .unwrap_or_else(|e| panic!("refused: {e}\n{}", body.get()));
        serde_json::to_value(yaml).unwrap()
    }

    fn finished_with(stdout: &[u8], message: &str) -> CodeRunStatus {
        let outcome = Outcome {
            message: Some(message.to_string()),
            ..Outcome::completed(Some(0))
        };
        let output = Output {
            stdout,
            stderr: stdout,
            ..Default::default()
        };
        finished(
            CodeRunStatus::default(),
            &outcome,
            Some(output),
            vec![],
            None,
            now(),
        )
    }

    #[test]
    fn a_c1_control_character_reaches_the_api_server_as_an_escape() {
        let status = finished_with("\u{0089}\n".as_bytes(), "x\u{0085}y");
        // What serde_json alone writes of such a string is refused, as the API server
        // refused it; escaped, it is read back as the same string.
        let raw = serde_json::json!({ "stdout": "\u{0089}" });
        let plain = serde_json::to_string(&raw).unwrap();
        assert!(serde_yaml::from_str::<serde_yaml::Value>(&plain).is_err());
        let escaped: serde_json::Value = serde_yaml::from_str(&yaml_safe_json(&raw)).unwrap();
        assert_eq!(escaped, raw);
        let body = apply_body(&status, Some("7"));
        assert!(body.get().contains("\\u0089") || !body.get().contains('\u{0089}'));
        let read = as_the_api_server_reads_it(&body);
        assert_eq!(read["metadata"]["resourceVersion"], "7");
        assert_eq!(read["status"]["phase"], "Completed");
    }

    #[test]
    fn every_character_up_to_ff_and_every_byte_survive_the_yaml_parser() {
        let text: String = (0u32..=0xFF).filter_map(char::from_u32).collect();
        let bytes: Vec<u8> = (0u8..=0xFF).collect();
        for out in [text.as_bytes(), &bytes] {
            let status = finished_with(out, &text);
            let read = as_the_api_server_reads_it(&apply_body(&status, None));
            let preview = read["status"]["stdoutPreview"].as_str().unwrap();
            assert!(preview.contains('\n') && preview.contains('\t'));
            assert!(
                !preview
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t')
            );
        }
    }

    #[test]
    fn random_output_never_makes_a_status_the_api_server_refuses() {
        let mut rng = rand::rng();
        for _ in 0..2000 {
            let len = rng.random_range(0..64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let chars: String = (0..len)
                .filter_map(|_| char::from_u32(rng.random_range(0..0x11_0000)))
                .collect();
            let status = finished_with(&bytes, &chars);
            let body = apply_body(&status, Some("1"));
            // The same value as JSON and as YAML: nothing was lost in the escaping.
            let as_json: serde_json::Value = serde_json::from_str(body.get()).unwrap();
            assert_eq!(as_the_api_server_reads_it(&body), as_json);
            let status2 = finished_with(chars.as_bytes(), &chars);
            as_the_api_server_reads_it(&apply_body(&status2, None));
        }
    }

    #[test]
    fn a_preview_is_at_most_its_size_and_shows_controls_as_replacement_characters() {
        assert_eq!(safe_preview(b"a\x1b[31mb\n\tc"), "a\u{FFFD}[31mb\n\tc");
        assert_eq!(safe_preview("\u{0089}".as_bytes()), "\u{FFFD}");
        assert!(safe_preview(&vec![b'x'; 10_000]).len() <= PREVIEW_BYTES);
    }

    #[test]
    fn a_rejected_status_keeps_nothing_the_program_wrote() {
        let status = finished_with(b"secret output", "m");
        let r = rejected(&status, "yaml: control characters are not allowed");
        assert_eq!(
            (r.phase, r.reason),
            (Some(Phase::Failed), Some(Reason::StatusRejected))
        );
        assert!(r.stdout_preview.is_none());
        assert!(r.condition(ConditionType::Finished).is_some());
    }
}
