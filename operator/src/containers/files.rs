//! A container's file operations (`spec.fileOps`): an upload's bytes copied from object
//! storage into the container's folder, a removal carried out; in order, each acknowledged
//! by the container before the next, and how far they got written to its status.
use codeinterp_crds::{CodeContainer, FileOp, FileOpError, FileOpKind};
use codeinterp_store::{ContainerFile, FileSource};
use futures::TryStreamExt;
use kube::ResourceExt;
use runner_protocol::{DATA_LINE_BYTES, Frame, Op, data_lines};

use super::line::{Line, LineError, Read};
use crate::context::Context;

/// How many failed operations a status keeps.
const ERRORS_KEPT: usize = 8;

/// The next operation to carry out, if any.
pub fn next(container: &CodeContainer) -> Option<&FileOp> {
    let done = container.status.as_ref().map_or(0, |s| s.file_ops_done);
    container
        .spec
        .file_ops
        .iter()
        .filter(|op| op.seq > done)
        .min_by_key(|op| op.seq)
}

/// Carries out the operation and records it in the container's status.
pub async fn apply(
    ctx: &Context,
    container: &CodeContainer,
    line: &mut Line,
    op: &FileOp,
) -> Result<(), LineError> {
    let id = format!("fileop-{}", op.seq);
    let tenant = container.tenant_in(ctx.settings.sandbox_namespace());
    let name = container.name_any();
    let result = match op.kind {
        FileOpKind::Put => match put_now(ctx, container, line, op, &id).await? {
            Ok(bytes) => {
                // The folder's index in storage says what the container holds.
                let entry = ContainerFile {
                    id: op.file_id.clone().unwrap_or_default(),
                    container: name,
                    tenant,
                    path: op.path.clone(),
                    bytes,
                    created_at: crate::status::now().0.as_second(),
                    source: FileSource::User,
                };
                ctx.store
                    .put_container_file(&entry)
                    .await
                    .map_err(|e| format!("recording the file: {e}"))
            }
            Err(e) => Err(e),
        },
        FileOpKind::Delete => {
            let delete = Op::Delete {
                id: id.clone(),
                path: op.path.clone(),
            };
            line.send(&delete, None).await?;
            match ack(line, &id).await? {
                Ok(()) => ctx
                    .store
                    .remove_container_file(&tenant, &name, &op.path)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("forgetting the file: {e}")),
                Err(e) => Err(e),
            }
        }
    };
    super::status::file_op_done(ctx, container, op.seq, result.err()).await;
    Ok(())
}

/// Streams the stored file into the container, in data lines as it reads it.
pub async fn put_now(
    ctx: &Context,
    container: &CodeContainer,
    line: &mut Line,
    op: &FileOp,
    id: &str,
) -> Result<Result<u64, String>, LineError> {
    let tenant = container.tenant_in(ctx.settings.sandbox_namespace());
    let Some(file_id) = op.file_id.as_deref() else {
        return Ok(Err("a Put names no file".into()));
    };
    let meta = match ctx.store.get_file_meta(&tenant, file_id).await {
        Ok(Some(meta)) => meta,
        Ok(None) => return Ok(Err(format!("no file {file_id:?}"))),
        Err(e) => return Ok(Err(format!("reading file {file_id:?}: {e}"))),
    };
    let put = Op::Put {
        id: id.to_string(),
        path: op.path.clone(),
        bytes: meta.bytes,
    };
    line.send(&put, None).await?;
    let mut chunks = match ctx.store.get_file_content(&tenant, file_id).await {
        Ok(chunks) => chunks,
        // The container waits for bytes that will not come: a new sync drops the put.
        Err(e) => return Err(LineError::Write(std::io::Error::other(e))),
    };
    let mut carry: Vec<u8> = Vec::new();
    while let Some(chunk) = chunks
        .try_next()
        .await
        .map_err(|e| LineError::Write(std::io::Error::other(e)))?
    {
        carry.extend_from_slice(&chunk);
        let whole = carry.len() - carry.len() % DATA_LINE_BYTES;
        for data in data_lines(&carry[..whole]) {
            line.write(&data).await?;
        }
        carry.drain(..whole);
    }
    for data in data_lines(&carry) {
        line.write(&data).await?;
    }
    line.flush().await?;
    Ok(ack(line, id).await?.map(|()| meta.bytes))
}

/// Waits for the container's answer to operation `id`.
async fn ack(line: &mut Line, id: &str) -> Result<Result<(), String>, LineError> {
    loop {
        if let Read::Frame(Frame::Ack { id: done, error }, _) = line.next().await?
            && done == id
        {
            return Ok(error.map_or(Ok(()), Err));
        }
    }
}

/// The failed operations a status keeps, with this one.
pub fn with_error(mut errors: Vec<FileOpError>, seq: u64, message: String) -> Vec<FileOpError> {
    errors.push(FileOpError { seq, message });
    let over = errors.len().saturating_sub(ERRORS_KEPT);
    errors.drain(..over);
    errors
}
