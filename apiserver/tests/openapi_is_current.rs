//! The checked-in `apiserver/openapi.json` must be what the handlers generate. To refresh it:
//! `cargo run -p codeinterp-apiserver -- --print-openapi > apiserver/openapi.json`
//! (or run this test with `UPDATE_OPENAPI=1`).

#[test]
fn the_checked_in_openapi_document_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = codeinterp_apiserver::openapi::document();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("writing openapi.json");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "apiserver/openapi.json is stale; regenerate it with \
         `cargo run -p codeinterp-apiserver -- --print-openapi > apiserver/openapi.json`"
    );
}

#[test]
fn the_document_describes_every_route_of_the_contract() {
    let doc: serde_json::Value =
        serde_json::from_str(&codeinterp_apiserver::openapi::document()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/runs", "post"),
        ("/v1/runs", "get"),
        ("/v1/runs/{id}", "get"),
        ("/v1/runs/{id}/cancel", "post"),
        ("/v1/files", "post"),
        ("/v1/files", "get"),
        ("/v1/files/{id}", "get"),
        ("/v1/files/{id}", "delete"),
        ("/v1/files/{id}/content", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is missing"
        );
    }
    let run = &doc["components"]["schemas"]["Run"]["properties"];
    for field in [
        "id",
        "object",
        "status",
        "language",
        "created_at",
        "started_at",
        "completed_at",
        "exit_code",
        "signal",
        "stdout",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
        "usage",
        "artifacts",
        "error",
    ] {
        assert!(run.get(field).is_some(), "Run.{field} is missing");
    }
}
