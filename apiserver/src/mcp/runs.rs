//! The run tools: `run_code`, `list_runs`, `get_run`. Each parses its arguments, then does
//! what the REST API does for the same request, through the same run service and the same
//! validation, so limits, quotas and messages are the REST API's.
use kube::ResourceExt;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, JsonObject};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::time::Instant;

use super::content;
use super::progress;
use super::server::{McpServer, caller, input_schema, parse_args, settle};
use crate::error::ApiError;
use crate::pagination::check_limit;
use crate::runs::request::{
    CreateRunRequest, RunLimits, ValidRun, check_input_size, validate, wait_budget,
};
use crate::runs::{events, service, unknown_cursor};

/// The arguments of `run_code`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCodeArgs {
    /// The program's language: `python` (Python 3, with numpy, pandas and matplotlib),
    /// `node` (Node.js), `ruby` or `php`.
    #[schemars(extend("enum" = ["python", "node", "ruby", "php"]))]
    pub language: String,
    /// The whole program, as the text of a script file (not a REPL session: print what you
    /// want to see). 1 to 262144 characters.
    #[schemars(length(min = 1, max = 262144))]
    pub code: String,
    /// Text given to the program on standard input (at most 262144 characters).
    #[serde(default)]
    #[schemars(length(max = 262144))]
    pub stdin: Option<String>,
    /// Wall-clock limit in milliseconds, counted from the moment the program starts: past
    /// it the program is killed and the run is `timed_out`. 100 to 300000, default 30000.
    #[serde(default)]
    #[schemars(range(min = 100, max = 300000))]
    pub timeout_ms: Option<u64>,
    /// Ids of files uploaded beforehand (`file-...`, uploaded with the REST API's
    /// `POST /v1/files`), placed in the working directory `/work` under their filenames. At
    /// most 16.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub files: Option<Vec<String>>,
    /// Run in this container (`cntr_...`, made with `create_container`): in its interpreter
    /// of the language, so what earlier runs there defined is still defined, with
    /// /mnt/data as the working directory. Without it, a fresh interpreter keeps nothing.
    #[serde(default)]
    #[schemars(length(min = 1, max = 64))]
    pub container: Option<String>,
}

impl RunCodeArgs {
    /// The REST request this call stands for.
    fn into_request(self) -> CreateRunRequest {
        CreateRunRequest {
            language: self.language,
            code: self.code,
            stdin: self.stdin,
            args: None,
            files: self.files,
            limits: self.timeout_ms.map(|timeout_ms| RunLimits {
                timeout_ms: Some(timeout_ms),
                ..Default::default()
            }),
            wait: None,
            stream: None,
            container: self.container,
        }
    }
}

/// The arguments of `list_runs`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRunsArgs {
    /// How many runs, 1 to 100 (default 20).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    pub limit: Option<i64>,
    /// To read the next page: the `last_id` of the previous one.
    #[serde(default)]
    pub after: Option<String>,
}

/// The arguments of `get_run`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetRunArgs {
    /// The run's id (`run-...`), as `run_code` or `list_runs` gave it.
    #[schemars(length(min = 1, max = 63))]
    pub run_id: String,
}

#[tool_router(router = run_tools, vis = "pub(super)")]
impl McpServer {
    /// Run a program in a sandboxed interpreter and get its result: status, exit code,
    /// stdout, stderr, and the files it wrote to /work/outputs (in a container: to
    /// /mnt/data), images as images, other files as download links that work without a key
    /// for an hour. The program has no network and cannot install packages; /work is its
    /// writable working directory. Without `container` nothing is kept between calls; with
    /// one, the container's interpreter and files are. The call is an error (isError) when the program exits
    /// with a non-zero code, is killed by a limit or times out, or when the request is
    /// invalid; the text says why. Output is sent as progress notifications while it runs
    /// when the client asks for progress.
    #[tool(
        title = "Run code",
        input_schema = input_schema::<RunCodeArgs>(),
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn run_code(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        settle(self.run(args, &ctx).await)
    }

    /// List your recent runs, newest first: id, status, language, exit code, when. Pages
    /// of up to 100; pass the `last_id` of a page as `after` to read the next.
    #[tool(
        title = "List runs",
        input_schema = input_schema::<ListRunsArgs>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_runs(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        settle(self.list(args, &ctx).await)
    }

    /// Get one of your runs by id, as `run_code` returns it: status, exit code, all of its
    /// stdout and stderr, and its output files. A run still going shows how far it got.
    #[tool(
        title = "Get a run",
        input_schema = input_schema::<GetRunArgs>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_run(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        settle(self.get(args, &ctx).await)
    }
}

impl McpServer {
    /// `run_code`: what `POST /v1/runs` does, with progress instead of a stream.
    async fn run(
        &self,
        args: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let received = Instant::now();
        let caller = caller(ctx)?;
        let (state, tenant) = (&self.state, caller.tenant.as_str());
        let args: RunCodeArgs = parse_args(args)?;
        let run = validate(args.into_request(), &state.settings.maxima)?;
        if let Some(container) = &run.container {
            crate::containers::service::for_run(state, tenant, container)?;
        }
        let (files, sizes) = service::input_files(state, tenant, &run).await?;
        check_input_size(&run, &sizes, &state.settings.maxima)?;
        crate::quota::check_run_room(state, tenant)?;
        let place = service::check_queue_room(state, tenant, service::run_bytes(&run))?;
        // Progress is what a stream is: it takes one of the tenant's slots, and without a
        // free one the run goes on without progress rather than failing.
        let token = ctx.meta.get_progress_token();
        let slot = token
            .as_ref()
            .and_then(|_| events::take_slot(state, tenant).ok());
        let created = service::create(state, tenant, None, &run, files).await?;
        place.created(&created.name_any(), |n| state.runs.counts(n));
        if let (Some(token), Some(slot)) = (token, slot) {
            let id = created.metadata.name.clone().unwrap_or_default();
            let events = events::follow(state, tenant, &id, slot);
            let deadline = received + budget(state, &run);
            progress::forward(events, token, &ctx.peer, deadline).await;
        }
        let answer = service::wait_for_end(state, tenant, created, &run, received)
            .await?
            .in_container(state, run.container.as_deref());
        Ok(content::result(state, tenant, content::run_of(state, answer)).await)
    }

    async fn list(
        &self,
        args: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let caller = caller(ctx)?;
        let args: ListRunsArgs = parse_args(args)?;
        let limit = check_limit(args.limit)?;
        let after = args.after.as_deref();
        match service::list(&self.state, &caller.tenant, after, limit).await? {
            Some(page) => Ok(content::page(&page)),
            None => Err(unknown_cursor(after)),
        }
    }

    async fn get(
        &self,
        args: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let caller = caller(ctx)?;
        let args: GetRunArgs = parse_args(args)?;
        let tenant = caller.tenant.as_str();
        match service::answer(&self.state, tenant, &args.run_id).await? {
            Some(answer) => {
                let run = content::run_of(&self.state, answer);
                Ok(content::result(&self.state, tenant, run).await)
            }
            None => Err(ApiError::not_found("run", &args.run_id)),
        }
    }
}

/// How long a call may wait for its run: what `POST /v1/runs` would.
fn budget(state: &crate::state::AppState, run: &ValidRun) -> std::time::Duration {
    let settings = &state.settings;
    wait_budget(
        &run.limits,
        &settings.maxima,
        settings.wait_slack,
        settings.max_wait,
    )
}
