//! The checked-in `apiserver/openapi.json` must be what the handlers generate. To refresh it:
//! `cargo run -p codeinterp-apiserver -- --print-openapi > apiserver/openapi.json`
//! (or run this test with `UPDATE_OPENAPI=1`).

#[test]
fn the_checked_in_openapi_document_is_current() {
    // Read when the test runs: a build directory may be shared between checkouts.
    let path =
        std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("openapi.json");
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
        "queue_position",
        "usage",
        "artifacts",
        "error",
    ] {
        assert!(run.get(field).is_some(), "Run.{field} is missing");
    }
}

/// The ranges the document gives each limit are the ones the server enforces: the CRD's
/// minima (the schema the Kubernetes API checks) and the service's default maxima.
#[test]
fn the_documented_limit_ranges_are_the_enforced_ones() {
    use kube::CustomResourceExt;
    let doc: serde_json::Value =
        serde_json::from_str(&codeinterp_apiserver::openapi::document()).unwrap();
    let documented = doc["components"]["schemas"]["RunLimits"]["properties"]
        .as_object()
        .unwrap()
        .clone();
    let crd = serde_json::to_value(codeinterp_crds::CodeRun::crd()).unwrap();
    let crd_limits = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["limits"]["properties"];
    let maxima = serde_json::to_value(codeinterp_crds::Maxima::default().max).unwrap();
    assert_eq!(documented.len(), 10);
    for (snake, schema) in &documented {
        let camel: String = snake
            .split('_')
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    w.to_string()
                } else {
                    w[..1].to_uppercase() + &w[1..]
                }
            })
            .collect();
        let min = schema["minimum"]
            .as_f64()
            .unwrap_or_else(|| panic!("{snake} has no minimum"));
        let max = schema["maximum"]
            .as_f64()
            .unwrap_or_else(|| panic!("{snake} has no maximum"));
        assert_eq!(
            min,
            crd_limits[&camel]["minimum"].as_f64().unwrap(),
            "{snake} minimum"
        );
        assert_eq!(max, maxima[&camel].as_f64().unwrap(), "{snake} maximum");
    }
    let request = &doc["components"]["schemas"]["CreateRunRequest"]["properties"];
    assert_eq!(request["code"]["maxLength"], 262144);
    assert_eq!(request["code"]["minLength"], 1);
    assert_eq!(request["args"]["maxItems"], 64);
    assert_eq!(request["files"]["maxItems"], 16);
    let languages = &doc["components"]["schemas"]["LanguageName"]["enum"];
    assert_eq!(
        languages,
        &serde_json::json!(["python", "node", "ruby", "php"])
    );
}

#[test]
fn every_operation_that_takes_a_key_declares_its_401() {
    let doc: serde_json::Value =
        serde_json::from_str(&codeinterp_apiserver::openapi::document()).unwrap();
    let mut keyed = 0;
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let takes_a_key = operation["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            if takes_a_key {
                keyed += 1;
                assert!(
                    operation["responses"].get("401").is_some(),
                    "{method} {path} does not declare 401"
                );
            }
        }
    }
    assert!(keyed >= 10, "only {keyed} operations take a key");
}

#[test]
fn every_api_operation_declares_what_its_middleware_may_answer() {
    let doc: serde_json::Value =
        serde_json::from_str(&codeinterp_apiserver::openapi::document()).unwrap();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for (method, operation) in operations.as_object().unwrap() {
            let responses = &operation["responses"];
            for status in ["401", "408", "429", "500"] {
                let declared = &responses[status];
                assert_eq!(
                    declared["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
            assert!(
                responses["429"]["headers"].get("Retry-After").is_some(),
                "{method} {path}: 429 without Retry-After"
            );
            if path.contains("{id}") {
                assert!(responses.get("400").is_some(), "{method} {path}: no 400");
            }
        }
    }
}

/// A `text/event-stream` schema describes each event (its `event`, `id` and `data` fields),
/// as OpenAPI 3.2 reads it and validators check it; the JSON in `data` is a `RunEvent`.
#[test]
fn event_streams_are_described_event_by_event_with_their_data_as_run_events() {
    let doc: serde_json::Value =
        serde_json::from_str(&codeinterp_apiserver::openapi::document()).unwrap();
    for (path, method) in [("/v1/runs", "post"), ("/v1/runs/{id}/events", "get")] {
        let stream =
            &doc["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"];
        assert_eq!(
            stream["schema"]["$ref"], "#/components/schemas/RunEventMessage",
            "{method} {path}"
        );
    }
    let message = &doc["components"]["schemas"]["RunEventMessage"];
    assert_eq!(
        message["required"],
        serde_json::json!(["event", "id", "data"])
    );
    let data = &message["properties"]["data"];
    assert_eq!(data["contentMediaType"], "application/json");
    assert_eq!(
        data["contentSchema"]["$ref"],
        "#/components/schemas/RunEvent"
    );
    assert!(doc["components"]["schemas"]["RunEvent"]["oneOf"].is_array());
    let created = &doc["paths"]["/v1/runs"]["post"]["responses"]["200"];
    assert_eq!(
        created["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Run"
    );
    assert_eq!(
        created["links"]["GetRun"]["operationId"], "get_run",
        "creating a run links to reading it"
    );
}
