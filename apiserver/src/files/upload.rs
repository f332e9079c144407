//! Receiving an upload: a multipart form of one `file` and a `purpose` (`/v1/files`), or of
//! one `file` alone (into a container, whose uploads are the tenant's files of a fixed
//! purpose). The file streams to object storage under the size cap and the tenant's storage
//! quota as it arrives; a form refused for any reason leaves no bytes behind. What memory the
//! upload may hold meanwhile was reserved in front of it ([`super::budget`]).
use axum::extract::multipart::{Field, Multipart, MultipartError};
use axum::http::StatusCode;
use codeinterp_store::{FileMeta, UploadError};
use futures::StreamExt;

use super::model::{PURPOSES, new_file_id, upload_filename, valid_purpose};
use crate::error::ApiError;
use crate::state::{AppState, now_unix};

/// A file's bytes, stored; its metadata is written only once the whole form is accepted.
struct Stored {
    id: String,
    filename: String,
    bytes: u64,
    sha256: String,
}

#[derive(Default)]
struct Form {
    file: Option<Stored>,
    purpose: Option<String>,
}

/// The purpose of a file uploaded into a container (it is the tenant's file too).
pub const CONTAINER_UPLOAD_PURPOSE: &str = "user_data";

/// Reads the form (`file` and `purpose`), storing its file, and returns the new file's
/// metadata (not written yet).
pub async fn receive(
    state: &AppState,
    tenant: &str,
    multipart: Multipart,
) -> Result<FileMeta, ApiError> {
    receive_form(state, tenant, multipart, None).await
}

/// Reads a form of a `file` alone (an upload into a container), as [`receive`] does.
pub async fn receive_file(
    state: &AppState,
    tenant: &str,
    multipart: Multipart,
) -> Result<FileMeta, ApiError> {
    receive_form(state, tenant, multipart, Some(CONTAINER_UPLOAD_PURPOSE)).await
}

/// `purpose` fixes the file's purpose (the form then has none), or the form gives it.
async fn receive_form(
    state: &AppState,
    tenant: &str,
    mut multipart: Multipart,
    purpose: Option<&str>,
) -> Result<FileMeta, ApiError> {
    let mut form = Form {
        purpose: purpose.map(str::to_string),
        ..Form::default()
    };
    let asks_purpose = purpose.is_none();
    let read = read_form(state, tenant, &mut multipart, &mut form, asks_purpose).await;
    let (file, purpose) = match read.and_then(|()| form.accept()) {
        Ok(accepted) => accepted,
        Err(e) => {
            if let Some(file) = &form.file
                && let Err(e) = state.store.discard_upload(tenant, &file.id).await
            {
                tracing::warn!(error = %e, "could not remove a refused upload");
            }
            return Err(e);
        }
    };
    crate::quota::record(state, tenant, file.bytes as i64);
    Ok(FileMeta {
        id: file.id,
        tenant: tenant.to_string(),
        bytes: file.bytes,
        created_at: now_unix(),
        filename: file.filename,
        purpose,
        sha256: file.sha256,
        run_id: None,
        // Uploads are never served for display, whatever they hold.
        content_type: None,
    })
}

impl Form {
    /// The file and purpose of a complete form (taken out of it), or what a client must fix
    /// first; a refused form keeps its file, to be discarded.
    fn accept(&mut self) -> Result<(Stored, String), ApiError> {
        match &self.purpose {
            Some(p) if valid_purpose(p) => {}
            Some(p) => {
                return Err(ApiError::invalid(
                    format!(
                        "purpose {p:?} is not valid; use one of {}",
                        PURPOSES.join(", ")
                    ),
                    "purpose".to_string(),
                ));
            }
            None => {
                return Err(ApiError::invalid(
                    "Missing required parameter: 'purpose'.",
                    "purpose".to_string(),
                ));
            }
        }
        match (self.file.take(), self.purpose.take()) {
            (Some(file), Some(purpose)) => Ok((file, purpose)),
            _ => Err(ApiError::invalid(
                "Missing required parameter: 'file'.",
                "file".to_string(),
            )),
        }
    }
}

async fn read_form(
    state: &AppState,
    tenant: &str,
    multipart: &mut Multipart,
    form: &mut Form,
    asks_purpose: bool,
) -> Result<(), ApiError> {
    let expected = if asks_purpose {
        "file and purpose"
    } else {
        "file"
    };
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("file") if form.file.is_some() => {
                return Err(ApiError::invalid(
                    "give one file per upload",
                    "file".to_string(),
                ));
            }
            Some("file") => form.file = Some(store_file(state, tenant, field).await?),
            Some("purpose") if asks_purpose => {
                form.purpose = Some(field.text().await.map_err(multipart_error)?)
            }
            other => {
                return Err(ApiError::invalid(
                    format!(
                        "Unrecognized request argument supplied: {}; expected {expected}",
                        other.unwrap_or("(unnamed part)")
                    ),
                    other.map(str::to_string),
                ));
            }
        }
    }
    Ok(())
}

/// Streams the file part to storage under a new id.
async fn store_file(state: &AppState, tenant: &str, field: Field<'_>) -> Result<Stored, ApiError> {
    let filename = upload_filename(field.file_name())
        .ok_or_else(|| ApiError::invalid("the file part needs a filename", "file".to_string()))?;
    let id = new_file_id();
    let max = state.settings.max_upload_bytes;
    // Refused before it was read if it could not fit at all; cut off here past the room.
    let room = crate::quota::upload_room(state, tenant).filter(|room| *room < max);
    let upload = state
        .store
        .put_file_stream(tenant, &id, field.boxed(), room.unwrap_or(max))
        .await?;
    match upload {
        Ok((bytes, sha256)) => Ok(Stored {
            id,
            filename,
            bytes,
            sha256,
        }),
        Err(UploadError::TooLarge(_)) if room.is_some() => {
            Err(crate::quota::upload_refused(state, tenant))
        }
        Err(UploadError::TooLarge(max)) => Err(too_large(max)),
        // The body limit (the multipart framing around the cap) cut it.
        Err(UploadError::Body(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(too_large(max))
        }
        Err(UploadError::Body(e)) => Err(ApiError::invalid(
            format!("upload failed: {}", e.body_text()),
            "file".to_string(),
        )),
    }
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!("The upload is too large: {}", e.body_text()))
    } else {
        ApiError::invalid(format!("Invalid multipart body: {}", e.body_text()), None)
    }
}

fn too_large(max: u64) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "The file is larger than the {max} bytes allowed (MAX_UPLOAD_BYTES)."
    ))
}
