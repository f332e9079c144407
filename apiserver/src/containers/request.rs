//! The bodies of `POST /v1/containers` and `POST /v1/containers/{id}/files` (its JSON
//! form), and their validation. Pure: what needs storage (the files named) is checked by
//! the service.
use codeinterp_crds::MemoryLimit;
use serde::Deserialize;
use utoipa::ToSchema;

use super::model::{ANCHOR, ExpiresAfterAnchor, MemoryLimitName};
use crate::error::ApiError;
use crate::runs::request::{FILE_ID_PATTERN, valid_file_id};

/// Most characters of a container's name (the CRD's bound).
pub const MAX_NAME_CHARS: usize = 256;
/// Most files a container may be created with.
pub const MAX_FILE_IDS: usize = 64;
/// The idle minutes a container may be given, and what it gets when none are asked.
pub const MIN_MINUTES: u32 = 1;
pub const MAX_MINUTES: u32 = 1440;
pub const DEFAULT_MINUTES: u32 = 20;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContainerRequest {
    /// A name for people (1 to 256 characters).
    #[schema(min_length = 1, max_length = 256)]
    pub name: String,
    /// Uploaded files (`file-...`) copied into the container's folder under their filenames
    /// (at most 64, no id twice).
    #[serde(default)]
    #[schema(schema_with = file_ids_schema)]
    pub file_ids: Option<Vec<String>>,
    /// When the container expires: minutes after its last activity (default 20).
    #[serde(default)]
    pub expires_after: Option<ExpiresAfterRequest>,
    /// Memory of the container (default `1g`; the service may allow less than `64g`).
    #[serde(default)]
    #[schema(value_type = Option<MemoryLimitName>)]
    pub memory_limit: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpiresAfterRequest {
    #[schema(value_type = ExpiresAfterAnchor)]
    pub anchor: String,
    /// 1 to 1440.
    #[schema(minimum = 1, maximum = 1440)]
    pub minutes: i64,
}

fn file_ids_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(FILE_ID_PATTERN))
                .max_length(Some(64)),
        )
        .max_items(Some(MAX_FILE_IDS))
        .unique_items(true)
        .description(Some(
            "Uploaded files (`file-...`) copied into the container's folder under their filenames (at most 64, no id twice).",
        ))
        .build()
}

/// A request that passed every check that needs no storage.
#[derive(Debug, PartialEq, Eq)]
pub struct ValidContainer {
    pub name: String,
    pub file_ids: Vec<String>,
    pub idle_minutes: u32,
    pub memory_limit: MemoryLimit,
}

/// Every check that needs no storage, in the order a client would fix them. `max_memory`
/// is the largest memory limit the service allows.
pub fn validate(
    req: CreateContainerRequest,
    max_memory: MemoryLimit,
) -> Result<ValidContainer, ApiError> {
    let chars = req.name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(ApiError::invalid(
            format!("name is {chars} characters; give 1 to {MAX_NAME_CHARS}"),
            "name".to_string(),
        ));
    }
    let file_ids = check_file_ids(req.file_ids.unwrap_or_default())?;
    let idle_minutes = match req.expires_after {
        None => DEFAULT_MINUTES,
        Some(e) => check_expiry(&e)?,
    };
    let memory_limit = match req.memory_limit {
        None => MemoryLimit::default(),
        Some(m) => check_memory(&m, max_memory)?,
    };
    Ok(ValidContainer {
        name: req.name,
        file_ids,
        idle_minutes,
        memory_limit,
    })
}

fn check_file_ids(ids: Vec<String>) -> Result<Vec<String>, ApiError> {
    if ids.len() > MAX_FILE_IDS {
        return Err(ApiError::invalid(
            format!(
                "file_ids has {} items; the maximum is {MAX_FILE_IDS}",
                ids.len()
            ),
            "file_ids".to_string(),
        ));
    }
    for (i, id) in ids.iter().enumerate() {
        if !valid_file_id(id) {
            return Err(ApiError::invalid_with_code(
                format!("{id:?} is not a file id"),
                format!("file_ids[{i}]"),
                "file_not_found",
            ));
        }
        if ids[..i].contains(id) {
            return Err(ApiError::invalid(
                format!("file {id} is given twice"),
                format!("file_ids[{i}]"),
            ));
        }
    }
    Ok(ids)
}

fn check_expiry(e: &ExpiresAfterRequest) -> Result<u32, ApiError> {
    if e.anchor != ANCHOR {
        return Err(ApiError::invalid(
            format!(
                "expires_after.anchor is {:?}; it must be {ANCHOR:?}",
                e.anchor
            ),
            "expires_after.anchor".to_string(),
        ));
    }
    u32::try_from(e.minutes)
        .ok()
        .filter(|m| (MIN_MINUTES..=MAX_MINUTES).contains(m))
        .ok_or_else(|| {
            ApiError::invalid(
                format!(
                    "expires_after.minutes is {}; it must be from {MIN_MINUTES} to {MAX_MINUTES}",
                    e.minutes
                ),
                "expires_after.minutes".to_string(),
            )
        })
}

fn check_memory(asked: &str, max: MemoryLimit) -> Result<MemoryLimit, ApiError> {
    let limit: MemoryLimit = asked
        .parse()
        .map_err(|msg: String| ApiError::invalid(msg, "memory_limit".to_string()))?;
    if limit.mb() > max.mb() {
        return Err(ApiError::invalid_with_code(
            format!(
                "memory_limit is {}; this service allows at most {}",
                limit.as_str(),
                max.as_str()
            ),
            "memory_limit".to_string(),
            "limit_out_of_range",
        ));
    }
    Ok(limit)
}

/// `POST /v1/containers/{id}/files` as JSON: an uploaded file copied in.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddFileRequest {
    /// An uploaded file (`file-...`).
    #[schema(pattern = r"^file-[A-Za-z0-9_-]{1,59}$", max_length = 64)]
    pub file_id: String,
}

/// The multipart form of `POST /v1/containers/{id}/files`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AddFileForm {
    /// The file's bytes; it goes into /mnt/data under its filename.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::parse_json;
    use axum::http::StatusCode;

    fn request(json: &str) -> Result<ValidContainer, ApiError> {
        validate(parse_json(json.as_bytes())?, MemoryLimit::FourGig)
    }

    fn param(e: &ApiError) -> Option<String> {
        e.body().error.param
    }

    #[test]
    fn a_name_alone_makes_a_1g_container_that_expires_after_20_idle_minutes() {
        let c = request(r#"{"name": "sess"}"#).unwrap();
        assert_eq!(
            c,
            ValidContainer {
                name: "sess".into(),
                file_ids: vec![],
                idle_minutes: 20,
                memory_limit: MemoryLimit::OneGig,
            }
        );
    }

    #[test]
    fn the_python_sdks_body_is_taken_whole() {
        let c = request(
            r#"{"name": "sess", "expires_after": {"anchor": "last_active_at", "minutes": 30},
                "file_ids": ["file-1"], "memory_limit": "4g"}"#,
        )
        .unwrap();
        assert_eq!((c.idle_minutes, c.memory_limit), (30, MemoryLimit::FourGig));
        assert_eq!(c.file_ids, ["file-1"]);
    }

    #[test]
    fn a_memory_limit_over_the_services_is_refused_naming_it() {
        let e = request(r#"{"name": "x", "memory_limit": "16g"}"#).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(param(&e).as_deref(), Some("memory_limit"));
        assert!(e.to_string().contains("at most 4g"), "{e}");
        let e = request(r#"{"name": "x", "memory_limit": "2g"}"#).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("memory_limit"));
    }

    #[test]
    fn expiry_minutes_and_anchor_are_checked() {
        for minutes in ["0", "1441", "-5", "99999999999"] {
            let e = request(&format!(
                r#"{{"name": "x", "expires_after": {{"anchor": "last_active_at", "minutes": {minutes}}}}}"#
            ))
            .unwrap_err();
            assert_eq!(
                param(&e).as_deref(),
                Some("expires_after.minutes"),
                "{minutes}"
            );
        }
        let e =
            request(r#"{"name": "x", "expires_after": {"anchor": "created_at", "minutes": 5}}"#)
                .unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("expires_after.anchor"));
        let e =
            request(r#"{"name": "x", "expires_after": {"anchor": "last_active_at"}}"#).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("expires_after.minutes"));
        assert!(
            request(
                r#"{"name": "x", "expires_after": {"anchor": "last_active_at", "minutes": 1440}}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn names_and_file_ids_are_checked() {
        let e = request(r#"{"name": ""}"#).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("name"));
        let e = request(&format!(r#"{{"name": "{}"}}"#, "n".repeat(257))).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("name"));
        let e = request(r#"{"name": "x", "file_ids": ["file-a", "../etc"]}"#).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("file_ids[1]"));
        let e = request(r#"{"name": "x", "file_ids": ["file-a", "file-a"]}"#).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("file_ids[1]"));
        let many: Vec<String> = (0..65).map(|i| format!("\"file-{i}\"")).collect();
        let e = request(&format!(
            r#"{{"name": "x", "file_ids": [{}]}}"#,
            many.join(",")
        ))
        .unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("file_ids"));
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let e = request(r#"{"name": "x", "network_policy": {"type": "allowlist"}}"#).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("network_policy"));
        let e =
            parse_json::<AddFileRequest>(br#"{"file_id": "file-1", "path": "/etc"}"#).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("path"));
    }
}
