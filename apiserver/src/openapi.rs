//! The OpenAPI document, generated from the handlers. A checked-in copy lives at
//! `apiserver/openapi.json`; a test fails when it differs. Regenerate it with
//! `cargo run -p codeinterp-apiserver -- --print-openapi > apiserver/openapi.json`.
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::runs::events;
use crate::state::AppState;
use crate::{files, health, runs};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key from API_KEYS"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Code Interpreter API",
        description = "Runs untrusted Python, Node.js, Ruby and PHP code in sandboxed Kubernetes pods. OpenAI-style: bearer keys, OpenAI-shaped errors, an OpenAI-compatible files API."
    ),
    paths(
        runs::create_run,
        runs::list_runs,
        runs::get_run,
        runs::cancel_run,
        events::get_events,
        files::upload_file,
        files::list_files,
        files::get_file,
        files::delete_file,
        files::file_content,
        health::healthz,
        health::readyz,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "runs", description = "Run code and read the results"),
        (name = "files", description = "Upload inputs and download outputs"),
        (name = "health", description = "Probes and metrics"),
    )
)]
pub struct ApiDoc;

/// The document as checked in: pretty JSON with a final newline.
pub fn document() -> String {
    let mut out = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    out.push('\n');
    out
}

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/openapi.json",
        get(|| async {
            ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
        }),
    )
}
