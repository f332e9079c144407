//! The OpenAPI document, generated from the handlers. A checked-in copy lives at
//! `apiserver/openapi.json`; a test fails when it differs. Regenerate it with
//! `cargo run -p codeinterp-apiserver -- --print-openapi > apiserver/openapi.json`.
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::link::Link;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::runs::events;
use crate::state::AppState;
use crate::{containers, files, health, runs};

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

/// What the middleware in front of every `/v1` operation may answer, whatever the handler
/// does: 401 (a wrong key, or none where one is needed), 408 (the request's deadline), 429
/// (the key's token bucket, or the address's failed keys) with `Retry-After`, and 500. An
/// operation's own description of one of these is kept; a 429 always gets the header.
struct CommonResponses;

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build()
}

fn retry_after() -> Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1)),
        )
        .description(Some("Seconds to wait before trying again"))
        .build()
}

const COMMON: [(&str, &str); 4] = [
    ("401", "Missing or wrong API key"),
    ("408", "The request took longer than the server allows"),
    (
        "429",
        "Too many requests for this key (or failed keys from this address)",
    ),
    (
        "500",
        "The server failed; nothing in the request is to blame",
    ),
];

/// Every operation of the document, with its path.
fn operations(
    doc: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = (&String, &mut Operation)> {
    doc.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        .map(move |operation| (path, operation))
    })
}

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (path, operation) in operations(doc) {
            if !path.starts_with("/v1/") {
                continue;
            }
            let responses = &mut operation.responses.responses;
            for (status, description) in COMMON {
                responses
                    .entry(status.to_string())
                    .or_insert_with(|| RefOr::T(error_response(description)));
            }
            if let Some(RefOr::T(limited)) = responses.get_mut("429") {
                limited.headers.insert("Retry-After".into(), retry_after());
            }
        }
    }
}

/// utoipa 5.5 writes a Link's fields in snake case (`operation_id`), which no OpenAPI tool
/// reads, so the links declared on the handlers are written out again, as the spec spells
/// them, through the response's extensions map (filled directly: its builder would prefix
/// `x-`).
struct LinksAsTheSpecSpellsThem;

fn link_json(link: &Link) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if !link.operation_id.is_empty() {
        out.insert("operationId".into(), link.operation_id.clone().into());
    }
    if !link.operation_ref.is_empty() {
        out.insert("operationRef".into(), link.operation_ref.clone().into());
    }
    if !link.parameters.is_empty() {
        let parameters = serde_json::to_value(&link.parameters).unwrap_or_default();
        out.insert("parameters".into(), parameters);
    }
    if !link.description.is_empty() {
        out.insert("description".into(), link.description.clone().into());
    }
    out.into()
}

impl Modify for LinksAsTheSpecSpellsThem {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (_, operation) in operations(doc) {
            for response in operation.responses.responses.values_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                if response.links.is_empty() {
                    continue;
                }
                let links: serde_json::Map<String, serde_json::Value> =
                    std::mem::take(&mut response.links)
                        .into_iter()
                        .filter_map(|(name, link)| match link {
                            RefOr::T(link) => Some((name, link_json(&link))),
                            RefOr::Ref(_) => None,
                        })
                        .collect();
                let extensions = response.extensions.get_or_insert_with(Default::default);
                extensions.insert("links".into(), links.into());
            }
        }
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
        containers::create_container,
        containers::list_containers,
        containers::get_container,
        containers::delete_container,
        containers::files::create_file,
        containers::files::list_files,
        containers::files::get_file,
        containers::files::file_content,
        containers::files::delete_file,
        containers::runs::list_runs,
        health::healthz,
        health::readyz,
    ),
    modifiers(&BearerAuth, &CommonResponses, &LinksAsTheSpecSpellsThem),
    tags(
        (name = "runs", description = "Run code and read the results"),
        (name = "files", description = "Upload inputs and download outputs"),
        (name = "containers", description = "Sessions that keep state and files between runs"),
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
