//! What the operator keeps of a CodeRun in its cache: what it decides from, not what a
//! tenant may make large. Code, stdin, arguments and inline input files stay in the cache
//! only while they are small ([`INLINE_BYTES`] together); a larger run's are dropped and read
//! from the API when its job is handed over ([`full_run`]). Finished runs keep none of them,
//! nor their output previews or output file names; no run keeps its annotations (kubectl's
//! last-applied copy holds the whole spec) or managed fields. So the cache of ten thousand
//! runs stays tens of MiB however large their specs are.
use codeinterp_crds::CodeRun;
use kube::{Api, ResourceExt};

/// Code, stdin, arguments and inline files up to this many bytes together stay in the cache.
pub const INLINE_BYTES: usize = 4096;

/// Set in the cached copy of a run whose inputs were dropped.
pub const ELIDED: &str = "codeinterp.dev/elided";

/// The bytes a run's spec holds that a tenant chooses the size of.
pub fn input_bytes(run: &CodeRun) -> usize {
    let s = &run.spec;
    s.code.len()
        + s.stdin.as_ref().map_or(0, String::len)
        + s.args.iter().map(String::len).sum::<usize>()
        + s.files
            .iter()
            .map(|f| f.name.len() + f.content_base64.as_ref().map_or(0, String::len))
            .sum::<usize>()
}

/// Trims the run to what the cache keeps.
pub fn project(run: &mut CodeRun) {
    run.managed_fields_mut().clear();
    run.annotations_mut().clear();
    let large = input_bytes(run) > INLINE_BYTES;
    if run.is_finished() || large {
        let s = &mut run.spec;
        s.code.clear();
        s.stdin = None;
        s.args.clear();
        for f in &mut s.files {
            f.content_base64 = None;
        }
        run.annotations_mut().insert(ELIDED.into(), "true".into());
    }
    if run.is_finished()
        && let Some(status) = run.status.as_mut()
    {
        status.stdout_preview = None;
        status.stderr_preview = None;
        status.artifacts.clear();
        status.applied = None;
    }
}

pub fn is_elided(run: &CodeRun) -> bool {
    run.annotations().contains_key(ELIDED)
}

/// The run with its whole spec: the cached copy if nothing was dropped from it, else the run
/// as the API has it (the same run: same UID).
pub async fn full_run(api: &Api<CodeRun>, run: &CodeRun) -> Result<CodeRun, kube::Error> {
    if !is_elided(run) {
        return Ok(run.clone());
    }
    let full = api.get(&run.name_any()).await?;
    if full.uid() != run.uid() {
        let gone = kube::core::Status::failure("the run was replaced", "NotFound").with_code(404);
        return Err(kube::Error::Api(Box::new(gone)));
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use codeinterp_crds::{CodeRunSpec, CodeRunStatus, InputFile, Language, Phase};

    fn run(code: &str, stdin: Option<&str>) -> CodeRun {
        let mut r = CodeRun::new(
            "r",
            CodeRunSpec {
                language: Language::Python,
                code: code.into(),
                stdin: stdin.map(Into::into),
                args: vec!["a".into()],
                files: vec![InputFile {
                    name: "in.txt".into(),
                    content_base64: Some("aGk=".into()),
                    file_id: None,
                }],
                limits: Default::default(),
                ttl_seconds_after_finished: None,
                cancel: None,
                container: None,
            },
        );
        r.annotations_mut().insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "x".repeat(100_000),
        );
        r
    }

    #[test]
    fn a_small_live_run_keeps_its_inputs_and_loses_its_annotations() {
        let mut r = run("print(1+1)", Some("x"));
        project(&mut r);
        assert_eq!(r.spec.code, "print(1+1)");
        assert_eq!(r.spec.files[0].content_base64.as_deref(), Some("aGk="));
        assert!(r.annotations().is_empty());
        assert!(!is_elided(&r));
    }

    #[test]
    fn a_large_live_run_keeps_only_what_decisions_need() {
        // Two-byte characters: the cap counts bytes.
        let mut r = run(&"é".repeat(INLINE_BYTES / 2 + 1), None);
        project(&mut r);
        assert!(r.spec.code.is_empty() && r.spec.args.is_empty());
        assert_eq!(r.spec.files[0].content_base64, None);
        assert_eq!(r.spec.files[0].name, "in.txt");
        assert!(is_elided(&r));
        assert!(input_bytes(&r) < 64);
    }

    #[test]
    fn a_finished_run_keeps_no_inputs_and_no_output() {
        let mut r = run("print(1+1)", None);
        r.status = Some(CodeRunStatus {
            phase: Some(Phase::Completed),
            stdout_preview: Some("2\n".repeat(1000)),
            ..Default::default()
        });
        project(&mut r);
        assert!(r.spec.code.is_empty());
        assert_eq!(r.status.unwrap().stdout_preview, None);
    }
}
