//! The container tools: `create_container`, `list_containers`, `list_container_files`,
//! `upload_container_file`, `delete_container`. Each does what the REST API's containers
//! routes do, through the same service and validation, so caps, quotas and messages are the
//! REST API's. A run in a container is `run_code` with `container`.
use base64::Engine;
use codeinterp_store::FileMeta;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::server::{McpServer, caller, input_schema, parse_args, settle};
use crate::containers::fileops::Outcome;
use crate::containers::files;
use crate::containers::model::{ContainerDeleted, from_cr};
use crate::containers::request::{CreateContainerRequest, ExpiresAfterRequest, validate};
use crate::containers::service::{self, expired, is_live};
use crate::error::ApiError;
use crate::files::model::new_file_id;
use crate::files::upload::CONTAINER_UPLOAD_PURPOSE;
use crate::state::now_unix;

/// The most bytes `upload_container_file` takes as `content`: it arrives inside the JSON of
/// one MCP request (larger files: upload with the REST API, then pass `file_id`).
pub const MAX_CONTENT_BYTES: usize = 8 * 1024 * 1024;

/// The arguments of `create_container`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContainerArgs {
    /// A name for people (1 to 256 characters).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Memory of the container: `1g` (default), `4g`, `16g` or `64g`; the service may
    /// allow less.
    #[serde(default)]
    #[schemars(extend("enum" = ["1g", "4g", "16g", "64g"]))]
    pub memory_limit: Option<String>,
    /// Minutes without a run after which the container expires, 1 to 1440 (default 20).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1440))]
    pub idle_minutes: Option<i64>,
    /// Uploaded files (`file-...`) to copy into /mnt/data first (at most 64).
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub file_ids: Option<Vec<String>>,
}

/// The arguments of the tools that name one container.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerArgs {
    /// The container's id (`cntr_...`), as `create_container` gave it.
    #[schemars(length(min = 1, max = 64))]
    pub container_id: String,
}

/// The arguments of `upload_container_file`: a file by its content, or one uploaded
/// before by its id.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadArgs {
    /// The container's id (`cntr_...`).
    #[schemars(length(min = 1, max = 64))]
    pub container_id: String,
    /// The file's name in /mnt/data (letters, digits, `.`, `_`, `-` and spaces are kept;
    /// anything else becomes `_`). Needed with `content`.
    #[serde(default)]
    #[schemars(length(min = 1, max = 255))]
    pub filename: Option<String>,
    /// The file's content: text as it is, or bytes in base64 with `base64: true`. At most
    /// 8 MiB.
    #[serde(default)]
    pub content: Option<String>,
    /// `content` is base64.
    #[serde(default)]
    pub base64: bool,
    /// Instead of content: an uploaded file (`file-...`), copied in under its filename.
    #[serde(default)]
    pub file_id: Option<String>,
}

#[tool_router(router = container_tools, vis = "pub(super)")]
impl McpServer {
    /// Create a container: a sandbox that keeps its interpreters and its files in /mnt/data
    /// between runs (variables, imports and loaded data stay), until it has been idle for
    /// its minutes. Run code in it with `run_code` and its `container` argument. Returns the
    /// container object with its id.
    #[tool(
        title = "Create a container",
        input_schema = input_schema::<CreateContainerArgs>(),
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn create_container(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        settle(self.create_container_(args, &ctx).await)
    }

    /// List your containers, newest first: id, name, status (running, expired, deleted),
    /// last activity.
    #[tool(
        title = "List containers",
        input_schema = input_schema::<NoArgs>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_containers(
        &self,
        Parameters(_args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        settle(self.list_containers_(&ctx))
    }

    /// List the files in a container's /mnt/data: path, bytes, and whether you put it
    /// there (`user`) or a run wrote it (`assistant`).
    #[tool(
        title = "List a container's files",
        input_schema = input_schema::<ContainerArgs>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_container_files(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        settle(self.list_files_(args, &ctx).await)
    }

    /// Put a file into a container's /mnt/data, by its content (text, or base64 with
    /// `base64: true`, up to 8 MiB) and `filename`, or by the id of a file uploaded before
    /// (`file_id`). A file of the same name is replaced. Programs then read it from
    /// /mnt/data.
    #[tool(
        title = "Upload a file into a container",
        input_schema = input_schema::<UploadArgs>(),
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn upload_container_file(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        settle(self.upload_(args, &ctx).await)
    }

    /// Delete a container at once: its interpreters end and its files are gone.
    #[tool(
        title = "Delete a container",
        input_schema = input_schema::<ContainerArgs>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false)
    )]
    async fn delete_container(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        settle(self.delete_(args, &ctx).await)
    }
}

/// No arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

impl McpServer {
    async fn create_container_(
        &self,
        args: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let caller = caller(ctx)?;
        let args: CreateContainerArgs = parse_args(args)?;
        let request = CreateContainerRequest {
            name: args.name,
            file_ids: args.file_ids,
            expires_after: args.idle_minutes.map(|minutes| ExpiresAfterRequest {
                anchor: "last_active_at".into(),
                minutes,
            }),
            memory_limit: args.memory_limit,
        };
        let valid = validate(request, self.state.settings.container_max_memory)?;
        let created = service::create(&self.state, &caller.tenant, &valid).await?;
        let container = from_cr(&created)
            .ok_or_else(|| ApiError::Internal("a new container has no container id".into()))?;
        Ok(json_result(&container))
    }

    fn list_containers_(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let caller = caller(ctx)?;
        let containers = service::list(&self.state, &caller.tenant, true);
        Ok(json_result(
            &serde_json::json!({ "containers": containers }),
        ))
    }

    async fn list_files_(
        &self,
        args: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let caller = caller(ctx)?;
        let args: ContainerArgs = parse_args(args)?;
        let tenant = caller.tenant.as_str();
        let id = args.container_id.as_str();
        let container = service::find(&self.state, tenant, id, "container_id")?;
        let listed = files::folder(&self.state, tenant, &container, id).await?;
        Ok(json_result(&serde_json::json!({ "files": listed })))
    }

    async fn upload_(
        &self,
        args: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let received = Instant::now();
        let caller = caller(ctx)?;
        let args: UploadArgs = parse_args(args)?;
        let (state, tenant) = (&self.state, caller.tenant.as_str());
        let id = args.container_id.clone();
        let container = service::find(state, tenant, &id, "container_id")?;
        if !is_live(&container) {
            return Err(expired("container_id"));
        }
        let meta = match (&args.file_id, &args.content) {
            (Some(file_id), None) => files::uploaded_file(state, tenant, file_id).await?,
            (None, Some(_)) => self.store_content(tenant, args).await?,
            _ => {
                return Err(ApiError::invalid(
                    "give either content (with filename) or file_id",
                    "content".to_string(),
                ));
            }
        };
        let (object, outcome) = files::put(state, tenant, &container, &id, meta, received).await?;
        let mut result = json_result(&object);
        if outcome == Outcome::Pending {
            result.content.push(ContentBlock::text(
                "The container has not started yet: it will put the file in when it starts.",
            ));
        }
        Ok(result)
    }

    /// Stores `content` as a file of the tenant (as an upload would), within its quota.
    async fn store_content(&self, tenant: &str, args: UploadArgs) -> Result<FileMeta, ApiError> {
        let state = &self.state;
        let filename = args
            .filename
            .filter(|f| !f.trim().is_empty())
            .ok_or_else(|| ApiError::invalid("content needs a filename", "filename".to_string()))?;
        let content = args.content.unwrap_or_default();
        let bytes = if args.base64 {
            base64::engine::general_purpose::STANDARD
                .decode(content.trim())
                .map_err(|e| {
                    ApiError::invalid(format!("content is not base64: {e}"), "content".to_string())
                })?
        } else {
            content.into_bytes()
        };
        if bytes.len() > MAX_CONTENT_BYTES {
            return Err(ApiError::invalid_with_code(
                format!(
                    "content is {} bytes; this tool takes at most {MAX_CONTENT_BYTES} (upload \
                     larger files with POST /v1/files and pass file_id)",
                    bytes.len()
                ),
                "content".to_string(),
                "file_too_large",
            ));
        }
        files::fits_folder(state, bytes.len() as u64)?;
        if crate::quota::upload_room(state, tenant).is_some_and(|room| room < bytes.len() as u64) {
            return Err(crate::quota::upload_refused(state, tenant));
        }
        let meta = FileMeta {
            id: new_file_id(),
            tenant: tenant.to_string(),
            bytes: bytes.len() as u64,
            created_at: now_unix(),
            filename,
            purpose: CONTAINER_UPLOAD_PURPOSE.to_string(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            run_id: None,
            content_type: None,
        };
        state.store.put_file(&meta, bytes.into()).await?;
        crate::quota::record(state, tenant, meta.bytes as i64);
        Ok(meta)
    }

    async fn delete_(
        &self,
        args: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let caller = caller(ctx)?;
        let args: ContainerArgs = parse_args(args)?;
        service::delete(&self.state, &caller.tenant, &args.container_id).await?;
        Ok(json_result(&ContainerDeleted {
            id: args.container_id,
            object: "container.deleted".into(),
            deleted: true,
        }))
    }
}

/// An object as the result: its JSON as text (what a model reads) and as structured content.
fn json_result<T: Serialize>(value: &T) -> CallToolResult {
    let json = serde_json::to_value(value).unwrap_or_default();
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(json);
    result
}
