//! `POST /v1/runs` bodies: their shape, their validation, and the names of the CodeRuns
//! they become. Pure: what needs storage (input files) is passed in.
use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use codeinterp_crds::{CodeRun, Language, Limits, MAX_CODE_BYTES, MAX_STDIN_BYTES, Maxima};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::error::ApiError;

/// Most command-line arguments, input files and characters per argument (the CRD's bounds).
pub const MAX_ARGS: usize = 64;
pub const MAX_ARG_BYTES: usize = 4096;
pub const MAX_FILES: usize = 16;

/// The languages a run may use.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum LanguageName {
    Python,
    Node,
    Ruby,
    Php,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRunRequest {
    #[schema(value_type = LanguageName)]
    pub language: String,
    /// The program's source (1 to 262144 characters).
    #[schema(min_length = 1, max_length = 262144)]
    pub code: String,
    /// Standard input (at most 262144 characters).
    #[serde(default)]
    #[schema(max_length = 262144)]
    pub stdin: Option<String>,
    /// Command-line arguments (at most 64, each at most 4096 characters).
    #[serde(default)]
    #[schema(schema_with = args_schema)]
    pub args: Option<Vec<String>>,
    /// Ids of uploaded files (`file-...`) placed in the working directory under their
    /// filenames (at most 16, no id twice). Their bytes together must fit the run's
    /// `disk_mb` and the service's input limit (100 MiB by default).
    #[serde(default)]
    #[schema(schema_with = files_schema)]
    pub files: Option<Vec<String>>,
    #[serde(default)]
    pub limits: Option<RunLimits>,
    /// Wait for the run to finish before answering (the default). With `false` the answer
    /// comes at once, with status `queued`.
    #[serde(default)]
    pub wait: Option<bool>,
    /// Answer with the run's events as they happen (`text/event-stream`) instead of the run.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Run in this container (`cntr_...`, see `/v1/containers`): in its interpreter of the
    /// language, with the state earlier runs left there, in its folder `/mnt/data` (input
    /// files go there too). Runs in one container go one at a time, in order.
    #[serde(default)]
    #[schema(pattern = r"^cntr_[0-9a-f]{1,58}$", max_length = 63)]
    pub container: Option<String>,
}

/// The pattern of a file id.
pub const FILE_ID_PATTERN: &str = r"^file-[A-Za-z0-9_-]{1,59}$";

/// An optional array, which may also be given as `null` (as the server takes it).
fn nullable_array() -> utoipa::openapi::schema::ArrayBuilder {
    use utoipa::openapi::schema::{ArrayBuilder, SchemaType, Type};
    ArrayBuilder::new().schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
}

fn args_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    nullable_array()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_ARG_BYTES)),
        )
        .max_items(Some(MAX_ARGS))
        .description(Some(
            "Command-line arguments (at most 64, each at most 4096 characters).",
        ))
        .build()
}

fn files_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    nullable_array()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(FILE_ID_PATTERN))
                .max_length(Some(64)),
        )
        .max_items(Some(MAX_FILES))
        .unique_items(true)
        .description(Some(
            "Ids of uploaded files (`file-...`) placed in the working directory under their filenames (at most 16, no id twice). Together they must fit the run's `disk_mb` and the service's input limit (100 MiB by default).",
        ))
        .build()
}

/// Limits for one run; unset ones take the service's defaults, and values outside the
/// ranges are refused. The maxima given are the defaults of a deployment; an operator of
/// the service may set lower ones for time and memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunLimits {
    /// Wall-clock limit from the moment the program starts (default 30000).
    #[schema(minimum = 100, maximum = 300000)]
    pub timeout_ms: Option<u64>,
    /// Memory of the program and everything it starts (default 512).
    #[schema(minimum = 32, maximum = 4096)]
    pub memory_mb: Option<u64>,
    /// CPU time the program may use (default 30000).
    #[schema(minimum = 100, maximum = 300000)]
    pub cpu_ms: Option<u64>,
    /// CPU share while it runs (default 1000).
    #[schema(minimum = 100, maximum = 2000)]
    pub cpu_millicores: Option<u64>,
    /// Bytes kept of stdout, and of stderr, each (default 262144).
    #[schema(minimum = 1, maximum = 1048576)]
    pub max_output_bytes: Option<u64>,
    /// Output files collected from /work/outputs (default 32).
    #[schema(minimum = 0, maximum = 64)]
    pub max_artifacts: Option<u32>,
    /// Largest output file kept (default and most: the service's input cap, 104857600 unless
    /// MAX_INPUT_MB says otherwise).
    #[schema(minimum = 0, maximum = 104857600)]
    pub max_artifact_bytes: Option<u64>,
    /// Output files' bytes together (default and most: as `max_artifact_bytes`).
    #[schema(minimum = 0, maximum = 104857600)]
    pub max_artifact_total_bytes: Option<u64>,
    /// Processes and threads at once (default 128).
    #[schema(minimum = 8, maximum = 512)]
    pub max_processes: Option<u64>,
    /// Size of the writable /work, and separately of /tmp, in MiB: writes past it fail with
    /// ENOSPC (default 64).
    #[schema(minimum = 1, maximum = 1024)]
    pub disk_mb: Option<u64>,
}

impl From<&RunLimits> for Limits {
    fn from(l: &RunLimits) -> Self {
        Limits {
            timeout_ms: l.timeout_ms,
            memory_mb: l.memory_mb,
            cpu_ms: l.cpu_ms,
            cpu_millicores: l.cpu_millicores,
            max_output_bytes: l.max_output_bytes,
            max_artifacts: l.max_artifacts,
            max_artifact_bytes: l.max_artifact_bytes,
            max_artifact_total_bytes: l.max_artifact_total_bytes,
            max_processes: l.max_processes,
            disk_mb: l.disk_mb,
        }
    }
}

/// A request that passed every check that needs no storage.
#[derive(Debug, PartialEq)]
pub struct ValidRun {
    pub language: Language,
    pub code: String,
    pub stdin: Option<String>,
    pub args: Vec<String>,
    pub file_ids: Vec<String>,
    pub limits: Limits,
    pub wait: bool,
    pub stream: bool,
    /// The CodeContainer to run in.
    pub container: Option<String>,
}

/// The CRD's lower bounds on each limit (camelCase name -> minimum), read from the schema
/// the CRD is generated from, so the API refuses what the Kubernetes API would.
static LIMIT_MINIMA: LazyLock<BTreeMap<String, u64>> = LazyLock::new(|| {
    use kube::CustomResourceExt;
    let crd = CodeRun::crd();
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| s.properties.as_ref()?.get("spec"))
        .and_then(|s| s.properties.as_ref()?.get("limits"))
        .and_then(|s| s.properties.as_ref())
        .map(|props| {
            props
                .iter()
                .filter_map(|(name, p)| Some((name.clone(), p.minimum? as u64)))
                .collect()
        })
        .unwrap_or_default()
});

/// Refuses limits under the CRD's minima or over the service's maxima, naming the field.
pub fn check_limits(limits: &RunLimits, maxima: &Maxima) -> Result<Limits, ApiError> {
    let asked = Limits::from(limits);
    let value = serde_json::to_value(&asked).expect("limits serialize");
    if let Some(fields) = value.as_object() {
        for (camel, v) in fields {
            let (Some(v), Some(min)) = (v.as_u64(), LIMIT_MINIMA.get(camel)) else {
                continue;
            };
            if v < *min {
                let field = snake_of(camel);
                return Err(ApiError::invalid_with_code(
                    format!("limits.{field} is {v}; the minimum is {min}"),
                    format!("limits.{field}"),
                    "limit_out_of_range",
                ));
            }
        }
    }
    asked.check(maxima).map_err(|e| {
        ApiError::invalid_with_code(
            e.to_string(),
            format!("limits.{}", e.field),
            "limit_out_of_range",
        )
    })?;
    Ok(asked)
}

fn snake_of(camel: &str) -> String {
    let mut out = String::new();
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn too_long(param: &str, len: usize, max: usize) -> ApiError {
    ApiError::invalid_with_code(
        format!("{param} is {len} bytes of UTF-8; the maximum is {max}"),
        param.to_string(),
        "too_large",
    )
}

/// Lengths are counted in bytes of UTF-8: what a run costs to keep and to send is its bytes
/// (a cap in characters let two- and four-byte characters double or quadruple it). The
/// schema's `maxLength` (characters) is the same figure, so a text within it in bytes is
/// within it in characters too.
fn bytes(s: &str) -> usize {
    s.len()
}

/// Every check that needs no storage, in the order a client would fix them.
pub fn validate(req: CreateRunRequest, maxima: &Maxima) -> Result<ValidRun, ApiError> {
    let language: Language = req.language.parse().map_err(|msg: String| {
        ApiError::invalid_with_code(msg, "language".to_string(), "invalid_language")
    })?;
    if req.code.is_empty() {
        return Err(ApiError::invalid(
            "code must not be empty",
            "code".to_string(),
        ));
    }
    if bytes(&req.code) > MAX_CODE_BYTES {
        return Err(too_long("code", bytes(&req.code), MAX_CODE_BYTES));
    }
    if let Some(stdin) = &req.stdin
        && bytes(stdin) > MAX_STDIN_BYTES
    {
        return Err(too_long("stdin", bytes(stdin), MAX_STDIN_BYTES));
    }
    let args = req.args.unwrap_or_default();
    if args.len() > MAX_ARGS {
        return Err(ApiError::invalid(
            format!("args has {} items; the maximum is {MAX_ARGS}", args.len()),
            "args".to_string(),
        ));
    }
    if let Some((i, a)) = args
        .iter()
        .enumerate()
        .find(|(_, a)| bytes(a) > MAX_ARG_BYTES)
    {
        return Err(too_long(&format!("args[{i}]"), bytes(a), MAX_ARG_BYTES));
    }
    let file_ids = req.files.unwrap_or_default();
    if file_ids.len() > MAX_FILES {
        return Err(ApiError::invalid(
            format!(
                "files has {} items; the maximum is {MAX_FILES}",
                file_ids.len()
            ),
            "files".to_string(),
        ));
    }
    for (i, id) in file_ids.iter().enumerate() {
        if !valid_file_id(id) {
            return Err(ApiError::invalid_with_code(
                format!("{id:?} is not a file id"),
                format!("files[{i}]"),
                "file_not_found",
            ));
        }
        if file_ids[..i].contains(id) {
            return Err(ApiError::invalid(
                format!("file {id} is given twice"),
                format!("files[{i}]"),
            ));
        }
    }
    let limits = check_limits(&req.limits.unwrap_or_default(), maxima)?;
    let container = req.container.as_deref().map(container_name).transpose()?;
    Ok(ValidRun {
        language,
        code: req.code,
        stdin: req.stdin,
        args,
        file_ids,
        limits,
        wait: req.wait.unwrap_or(true),
        stream: req.stream.unwrap_or(false),
        container,
    })
}

/// The CodeContainer a run's `container` names (whether it is the tenant's is the
/// service's to say).
fn container_name(id: &str) -> Result<String, ApiError> {
    crate::containers::model::name_of(id).ok_or_else(|| {
        ApiError::invalid_with_code(
            format!("{id:?} is not a container id (cntr_...)"),
            "container".to_string(),
            "container_not_found",
        )
    })
}

/// A file id as the API makes them (`file-` and letters, digits, `_` or `-`).
pub fn valid_file_id(id: &str) -> bool {
    id.strip_prefix("file-").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 59
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// Input files go to the run's `/work`: together they must fit it, and the service's cap.
pub fn check_input_size(
    run: &ValidRun,
    file_bytes: &[u64],
    maxima: &Maxima,
) -> Result<(), ApiError> {
    let total: u64 = file_bytes.iter().sum();
    let limits = run.limits.clamp(maxima);
    let disk = limits.max_input_bytes();
    let cap = maxima.max_input_bytes.min(disk);
    if total > cap {
        let message = if total > maxima.max_input_bytes {
            format!(
                "input files together are {total} bytes; a run may be given at most {} bytes",
                maxima.max_input_bytes
            )
        } else {
            format!(
                "input files together are {total} bytes, more than /work holds ({} MiB): raise limits.disk_mb",
                limits.disk_mb
            )
        };
        return Err(ApiError::invalid_with_code(
            message,
            "files".to_string(),
            "inputs_too_large",
        ));
    }
    Ok(())
}

/// The name an uploaded file gets in the run's working directory: the CRD allows
/// `^[A-Za-z0-9_][A-Za-z0-9._ -]*$`, at most 128 characters; other characters become `_`.
pub fn input_file_name(filename: &str) -> String {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ' ' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    if name.starts_with(['.', ' ', '-']) || name.is_empty() {
        name.insert(0, '_');
        name.truncate(128);
    }
    name
}

/// Ids of CodeRuns created without an idempotency key: `run-` and 20 random characters.
pub fn random_run_name() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("run-{suffix}")
}

/// The same tenant and key always name the same CodeRun, so a repeated request finds the
/// run the first one created; another tenant's key cannot reach it.
pub fn idempotent_run_name(tenant: &str, key: &str) -> String {
    let digest = Sha256::digest(format!("{tenant}\n{key}"));
    format!("run-{}", &hex::encode(digest)[..24])
}

/// An `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub fn check_idempotency_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
            "Idempotency-Key".to_string(),
        ));
    }
    Ok(())
}

/// How long `POST /v1/runs` waits: the run's timeout plus slack for queueing, starting
/// and storing, at most `max_wait`.
pub fn wait_budget(
    limits: &Limits,
    maxima: &Maxima,
    slack: Duration,
    max_wait: Duration,
) -> Duration {
    let timeout = Duration::from_millis(limits.clamp(maxima).timeout_ms);
    (timeout + slack).min(max_wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::parse_json;
    use axum::http::StatusCode;

    fn request(json: &str) -> Result<ValidRun, ApiError> {
        validate(parse_json(json.as_bytes())?, &Maxima::default())
    }

    fn param(e: &ApiError) -> Option<String> {
        e.body().error.param
    }

    #[test]
    fn the_quickstart_request_is_valid_and_waits() {
        let run = request(
            r#"{"language": "python", "code": "print(1+1)", "limits": {"timeout_ms": 3000}}"#,
        )
        .unwrap();
        assert_eq!(run.language, Language::Python);
        assert_eq!(run.limits.timeout_ms, Some(3000));
        assert!(run.wait);
        assert!(run.args.is_empty());
    }

    #[test]
    fn an_unknown_language_is_named_with_the_valid_ones() {
        let e = request(r#"{"language": "cobol", "code": "x"}"#).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(param(&e).as_deref(), Some("language"));
        let msg = e.to_string();
        assert!(
            msg.contains("cobol") && msg.contains("python, node, ruby, php"),
            "{msg}"
        );
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let e = request(r#"{"language": "python", "code": "x", "image": "evil"}"#).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("image"));
        let e =
            request(r#"{"language": "python", "code": "x", "limits": {"gpu": 1}}"#).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("limits.gpu"));
    }

    #[test]
    fn a_limit_over_the_maximum_is_named() {
        let e = request(r#"{"language": "python", "code": "x", "limits": {"memory_mb": 100000}}"#)
            .unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("limits.memory_mb"));
        assert!(e.to_string().contains("4096"), "{e}");
    }

    #[test]
    fn a_limit_under_the_crd_minimum_is_named() {
        let e = request(r#"{"language": "python", "code": "x", "limits": {"timeout_ms": 5}}"#)
            .unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("limits.timeout_ms"));
        assert!(e.to_string().contains("minimum is 100"), "{e}");
        let e = request(r#"{"language": "python", "code": "x", "limits": {"max_processes": 1}}"#)
            .unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("limits.max_processes"));
        assert!(
            request(r#"{"language": "python", "code": "x", "limits": {"max_artifacts": 0}}"#)
                .is_ok()
        );
    }

    #[test]
    fn the_crd_minima_are_read_from_its_schema() {
        assert_eq!(LIMIT_MINIMA.get("timeoutMs"), Some(&100));
        assert_eq!(LIMIT_MINIMA.get("memoryMb"), Some(&32));
        assert_eq!(LIMIT_MINIMA.len(), 10);
    }

    #[test]
    fn sizes_are_checked() {
        let big = "x".repeat(MAX_CODE_BYTES + 1);
        let e = request(&format!(r#"{{"language": "python", "code": "{big}"}}"#)).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("code"));
        let e = request(r#"{"language": "python", "code": ""}"#).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("code"));
        let e = request(&format!(
            r#"{{"language": "python", "code": "x", "stdin": "{}"}}"#,
            "y".repeat(MAX_STDIN_BYTES + 1)
        ))
        .unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("stdin"));
        let e = request(&format!(
            r#"{{"language": "python", "code": "x", "args": ["a", "{}"]}}"#,
            "y".repeat(MAX_ARG_BYTES + 1)
        ))
        .unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("args[1]"));
        let e = request(r#"{"language": "python", "code": "x", "files": ["file-a", "file-a"]}"#)
            .unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("files[1]"));
    }

    #[test]
    fn inputs_must_fit_the_runs_disk_and_the_services_cap() {
        let m = Maxima::default();
        let run = request(r#"{"language": "python", "code": "x", "wait": false}"#).unwrap();
        assert!(!run.wait);
        assert!(check_input_size(&run, &[30 << 20, 30 << 20], &m).is_ok());
        let e = check_input_size(&run, &[40 << 20, 40 << 20], &m).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.body().error.code.as_deref(), Some("inputs_too_large"));
        assert!(e.to_string().contains("disk_mb"), "{e}");
        let big =
            request(r#"{"language": "python", "code": "x", "limits": {"disk_mb": 1024}}"#).unwrap();
        assert!(check_input_size(&big, &[90 << 20], &m).is_ok());
        let e = check_input_size(&big, &[101 << 20], &m).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
    }

    #[test]
    fn lengths_are_counted_in_bytes_so_wide_characters_cannot_multiply_them() {
        let code = "é".repeat(MAX_CODE_BYTES / 2);
        assert!(request(&format!(r#"{{"language": "python", "code": "{code}"}}"#)).is_ok());
        let code = "é".repeat(MAX_CODE_BYTES / 2 + 1);
        let e = request(&format!(r#"{{"language": "python", "code": "{code}"}}"#)).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("code"));
        let stdin = "😀".repeat(MAX_STDIN_BYTES / 4 + 1);
        let body = format!(r#"{{"language": "python", "code": "x", "stdin": "{stdin}"}}"#);
        assert_eq!(
            param(&request(&body).unwrap_err()).as_deref(),
            Some("stdin")
        );
        let e = request(r#"{"language": "python", "code": "x", "files": ["../x"]}"#).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("files[0]"));
    }

    #[test]
    fn uploaded_names_become_plain_working_directory_names() {
        assert_eq!(input_file_name("data.csv"), "data.csv");
        assert_eq!(input_file_name("../../etc/passwd"), "passwd");
        assert_eq!(input_file_name("C:\\x\\report 1.txt"), "report 1.txt");
        assert_eq!(input_file_name(".hidden"), "_.hidden");
        assert_eq!(input_file_name("naïve (1).txt"), "na_ve _1_.txt");
        assert_eq!(input_file_name(""), "_");
        assert_eq!(input_file_name(&"a".repeat(300)).len(), 128);
        assert_eq!(input_file_name(&format!(".{}", "a".repeat(300))).len(), 128);
    }

    #[test]
    fn idempotent_names_depend_on_tenant_and_key_only() {
        let a = idempotent_run_name("acme", "k1");
        assert_eq!(a, idempotent_run_name("acme", "k1"));
        assert_ne!(a, idempotent_run_name("beta", "k1"));
        assert_ne!(a, idempotent_run_name("acme", "k2"));
        assert!(a.starts_with("run-") && a.len() == 28);
        assert!(
            a[4..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(check_idempotency_key("abc-123").is_ok());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key("has space").is_err());
        assert!(check_idempotency_key(&"k".repeat(256)).is_err());
    }

    #[test]
    fn random_names_are_valid_kubernetes_names() {
        let a = random_run_name();
        assert_ne!(a, random_run_name());
        assert_eq!(a.len(), 24);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
    }

    #[test]
    fn the_wait_covers_the_timeout_and_slack_up_to_the_maximum() {
        let m = Maxima::default();
        let slack = Duration::from_secs(150);
        let max = Duration::from_secs(330);
        let short = Limits {
            timeout_ms: Some(3000),
            ..Default::default()
        };
        assert_eq!(
            wait_budget(&short, &m, slack, max),
            Duration::from_secs(153)
        );
        assert_eq!(
            wait_budget(&Limits::default(), &m, slack, max),
            Duration::from_secs(180)
        );
        let long = Limits {
            timeout_ms: Some(300_000),
            ..Default::default()
        };
        assert_eq!(wait_budget(&long, &m, slack, max), max);
    }
}
