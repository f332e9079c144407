//! A run's inputs, resolved before it gets a pod (so a bad one fails at once) and streamed
//! to the pod's stdin as the job: the header, then the source, stdin and each input file,
//! uploaded ones straight from object storage, never whole in memory.
use base64::Engine;
use codeinterp_crds::{CodeRun, EffectiveLimits, Reason};
use codeinterp_store::Store;
use futures::TryStreamExt;
use runner_protocol::{InputFile, Job, PROTOCOL_VERSION};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Where an input file's bytes come from.
#[derive(Clone, Debug)]
pub enum Source {
    Inline(Vec<u8>),
    Stored { tenant: String, id: String },
}

#[derive(Clone, Debug)]
pub struct Inputs {
    pub job: Job,
    code: Vec<u8>,
    stdin: Option<Vec<u8>>,
    files: Vec<Source>,
}

/// Why the inputs cannot be given to the run.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

fn refuse(reason: Reason, message: String) -> Refusal {
    Refusal { reason, message }
}

/// Checks every input and learns every size. `tenant` is whose uploaded files the run may
/// read, `None` when it may read none (a run the REST API did not create).
pub async fn resolve(
    store: &Store,
    run: &CodeRun,
    limits: &EffectiveLimits,
    tenant: Option<&str>,
    max_input_bytes: u64,
) -> Result<Inputs, Refusal> {
    let mut files = Vec::new();
    let mut sources = Vec::new();
    for f in &run.spec.files {
        let (bytes, source) = resolve_file(store, f, tenant).await?;
        files.push(InputFile {
            name: f.name.clone(),
            bytes,
        });
        sources.push(source);
    }
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    let cap = max_input_bytes.min(limits.max_input_bytes());
    if total > cap {
        return Err(refuse(
            Reason::InputsTooLarge,
            format!(
                "input files are {total} bytes; a run may be given at most {cap} (raise limits.disk_mb, up to the service's maximum)"
            ),
        ));
    }
    let code = run.spec.code.clone().into_bytes();
    let stdin = run.spec.stdin.clone().map(String::into_bytes);
    let job = Job {
        v: PROTOCOL_VERSION,
        language: run.spec.language,
        args: run.spec.args.clone(),
        limits: limits.clone(),
        code_bytes: code.len() as u64,
        stdin_bytes: stdin.as_ref().map(|s| s.len() as u64),
        files,
    };
    let line = job.header_line();
    Job::parse_header(&line[..line.len() - 1])
        .map_err(|e| refuse(Reason::InvalidInput, e.to_string()))?;
    Ok(Inputs {
        job,
        code,
        stdin,
        files: sources,
    })
}

/// One input file: its size and where its bytes come from.
async fn resolve_file(
    store: &Store,
    f: &codeinterp_crds::InputFile,
    tenant: Option<&str>,
) -> Result<(u64, Source), Refusal> {
    let invalid = |why: String| {
        refuse(
            Reason::InvalidInput,
            format!("input file {:?}: {why}", f.name),
        )
    };
    match (&f.content_base64, &f.file_id) {
        (Some(b64), _) => {
            let content = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| invalid("contentBase64 is not valid base64".into()))?;
            Ok((content.len() as u64, Source::Inline(content)))
        }
        (None, Some(id)) => {
            let Some(tenant) = tenant else {
                return Err(invalid(
                    "fileId inputs are for runs created through the REST API".into(),
                ));
            };
            let meta = store
                .get_file_meta(tenant, id)
                .await
                .ok()
                .flatten()
                .ok_or_else(|| invalid(format!("no file {id:?}")))?;
            let source = Source::Stored {
                tenant: tenant.to_string(),
                id: id.clone(),
            };
            Ok((meta.bytes, source))
        }
        (None, None) => Err(invalid("it has no content".into())),
    }
}

/// The run's inputs, resolved as the operator's settings allow.
/// The cache may hold the run without its code and stdin (see [`crate::projection`]): they
/// are read from the API then.
pub async fn for_run(ctx: &crate::context::Context, run: &CodeRun) -> Result<Inputs, Refusal> {
    let run = &whole(ctx, run).await?;
    let tenant = ctx.tenant(run);
    let readable = ctx.is_rest_run(run).then_some(tenant.as_str());
    resolve(
        &ctx.store,
        run,
        &ctx.limits(run),
        readable,
        ctx.settings.maxima.max_input_bytes,
    )
    .await
}

/// Checks the run's inputs before it takes room (so a bad one fails it at once).
pub async fn check(ctx: &crate::context::Context, run: &CodeRun) -> Result<(), Refusal> {
    for_run(ctx, run).await.map(drop)
}

impl Inputs {
    /// Writes the job to the pod's stdin. Uploaded files are copied from object storage as
    /// they stream, and must be exactly the size their metadata said.
    pub async fn write(
        &self,
        store: &Store,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> std::io::Result<()> {
        out.write_all(&self.job.header_line()).await?;
        self.write_body(store, out).await
    }

    /// Writes what follows the job's header: code, stdin and the input files' bytes (a
    /// container's `run` operation carries the header itself).
    pub async fn write_body(
        &self,
        store: &Store,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> std::io::Result<()> {
        out.write_all(&self.code).await?;
        if let Some(stdin) = &self.stdin {
            out.write_all(stdin).await?;
        }
        for (file, source) in self.job.files.iter().zip(&self.files) {
            match source {
                Source::Inline(bytes) => out.write_all(bytes).await?,
                Source::Stored { tenant, id } => {
                    let mut stream = store
                        .get_file_content(tenant, id)
                        .await
                        .map_err(std::io::Error::other)?;
                    let mut sent = 0u64;
                    while let Some(chunk) =
                        stream.try_next().await.map_err(std::io::Error::other)?
                    {
                        sent += chunk.len() as u64;
                        if sent > file.bytes {
                            return Err(std::io::Error::other(format!(
                                "input file {:?} grew past its size",
                                file.name
                            )));
                        }
                        out.write_all(&chunk).await?;
                    }
                    if sent != file.bytes {
                        return Err(std::io::Error::other(format!(
                            "input file {:?} is shorter than its size",
                            file.name
                        )));
                    }
                }
            }
        }
        out.flush().await
    }
}

/// The run with its whole spec, read again for a while if the API fails.
async fn whole(ctx: &crate::context::Context, run: &CodeRun) -> Result<CodeRun, Refusal> {
    use kube::ResourceExt;
    let api = ctx.runs_api(&run.namespace().unwrap_or_default());
    let mut wait = std::time::Duration::from_millis(200);
    for _ in 0..6 {
        match crate::projection::full_run(&api, run).await {
            Ok(full) => return Ok(full),
            Err(kube::Error::Api(s)) if s.code == 404 => break,
            Err(e) => tracing::warn!(error = %e, "reading the run's spec; trying again"),
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    Err(refuse(
        Reason::InvalidInput,
        "the run's spec could not be read from the API".into(),
    ))
}
