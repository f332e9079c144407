//! The MCP server: its identity, its tools, and the two rules every tool follows. A tool
//! learns its caller from the HTTP request the transport hands it (the REST middleware put
//! the [`Caller`] there), and a failure is a tool result with `isError` carrying the REST
//! API's message, never a protocol error: the model reads it and can correct its call.
//!
//! Tools are grouped by resource, one `#[tool_router(router = ...)]` block each
//! ([`super::runs`], [`super::containers`]); [`McpServer::tools`] adds the groups together.
use std::sync::{Arc, LazyLock};

use axum::http::request::Parts;
use rmcp::handler::server::common::schema_for_input;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, JsonObject, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, tool_handler};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::{ApiError, parse_value};
use crate::state::AppState;

/// What a client shows a model about the server as a whole.
const INSTRUCTIONS: &str = "Runs programs in Python 3, Node.js, Ruby or PHP in a sandbox with no network, and returns what they printed and the files they wrote (images inline, other files as links). A run_code call without a container starts a fresh interpreter and keeps nothing. To keep variables, imports and files between calls, create_container once and pass its id as run_code's container: its files live in /mnt/data, and upload_container_file puts files there. Use list_runs and get_run to look at earlier runs.";

/// Every tool, built once.
static TOOLS: LazyLock<ToolRouter<McpServer>> = LazyLock::new(McpServer::tools);

/// One request's server: the API's shared state, nothing of its own (the transport is
/// stateless, so a server lives for one request).
#[derive(Clone)]
pub struct McpServer {
    pub(super) state: AppState,
}

impl McpServer {
    pub fn new(state: AppState) -> Self {
        McpServer { state }
    }

    /// The tools of every resource, their descriptions as prose.
    fn tools() -> ToolRouter<Self> {
        let mut tools = Self::run_tools() + Self::container_tools();
        for route in tools.map.values_mut() {
            if let Some(text) = &route.attr.description {
                route.attr.description = Some(prose(text).into());
            }
        }
        tools
    }
}

#[tool_handler(router = TOOLS)]
impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("codeinterp", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

/// The input schema of a tool whose arguments are `T`. Tools take their arguments as a plain
/// object and parse them themselves ([`parse_args`]), so a wrong argument is a tool error the
/// model can read rather than a protocol error; the schema still tells it what to send.
pub fn input_schema<T: schemars::JsonSchema + 'static>() -> Arc<JsonObject> {
    let schema =
        schema_for_input::<T>().unwrap_or_else(|e| panic!("the input schema of a tool: {e}"));
    let mut schema = (*schema).clone();
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        for property in properties.values_mut() {
            if let Some(Value::String(text)) = property.get_mut("description") {
                *text = prose(text);
            }
        }
    }
    Arc::new(schema)
}

/// Doc comments are wrapped at 100 columns; a model reads them as paragraphs.
fn prose(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .split('\n')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// A tool's arguments, with the REST API's messages for what is wrong (`param` named).
pub fn parse_args<T: DeserializeOwned>(args: JsonObject) -> Result<T, ApiError> {
    parse_value(serde_json::Value::Object(args))
}

/// The caller of a tool, as authentication found it.
pub fn caller(ctx: &RequestContext<RoleServer>) -> Result<Caller, ApiError> {
    ctx.extensions
        .get::<Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| ApiError::Unauthorized {
            message: "This tool needs an API key: send Authorization: Bearer <key>.".into(),
            code: None,
        })
}

/// A failure as a tool result: the message the REST API would answer, and its whole error
/// object as structured content. Server faults are logged and told without detail.
pub fn failure(e: ApiError) -> CallToolResult {
    if e.status().is_server_error() {
        tracing::error!(error = %e, "an MCP tool failed");
    }
    let body = e.body();
    let mut result = CallToolResult::error(vec![ContentBlock::text(body.error.message.clone())]);
    result.structured_content = serde_json::to_value(&body).ok();
    result
}

/// A tool's outcome, whichever it was.
pub fn settle(outcome: Result<CallToolResult, ApiError>) -> CallToolResult {
    outcome.unwrap_or_else(failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_doc_comments_become_paragraphs() {
        assert_eq!(prose("one\ntwo\n\nthree"), "one two\n\nthree");
        assert_eq!(prose("single"), "single");
    }

    #[test]
    fn every_tool_is_described_in_prose_with_a_schema() {
        for tool in TOOLS.list_all() {
            let description = tool.description.unwrap_or_default();
            assert!(!description.contains('\n'), "{}", tool.name);
            assert_eq!(tool.input_schema.get("type"), Some(&"object".into()));
        }
    }
}
