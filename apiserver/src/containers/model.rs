//! The container objects of the wire (OpenAI's Containers API shapes), made from a
//! CodeContainer and from the store's index of its folder, and the ids: a container's id
//! maps one to one to the name of its CodeContainer (`cntr_<hex>` is `cntr-<hex>`), so
//! nothing needs to remember which is which. Pure.
use codeinterp_crds::{CodeContainer, ContainerPhase};
use codeinterp_store::{ContainerFile, FileSource};
use runner_protocol::CONTAINER_DATA_DIR;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a container id starts with, and the name of its CodeContainer.
pub const ID_PREFIX: &str = "cntr_";
pub const NAME_PREFIX: &str = "cntr-";
/// Hex digits of a new container's id (128 random bits).
const NEW_ID_HEX: usize = 32;
/// Most hex digits an id may have: its CodeContainer's name stays within 63 characters.
pub const MAX_ID_HEX: usize = 63 - NAME_PREFIX.len();
/// The pattern of a container id.
pub const CONTAINER_ID_PATTERN: &str = r"^cntr_[0-9a-f]{1,58}$";
/// `expires_after.anchor`: the only one there is.
pub const ANCHOR: &str = "last_active_at";

fn is_hex_suffix(s: &str) -> bool {
    (1..=MAX_ID_HEX).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The CodeContainer named by a container id, if it is one.
pub fn name_of(id: &str) -> Option<String> {
    let hex = id.strip_prefix(ID_PREFIX).filter(|h| is_hex_suffix(h))?;
    Some(format!("{NAME_PREFIX}{hex}"))
}

/// The container id of a CodeContainer the REST API made (its name is `cntr-<hex>`).
pub fn id_of(name: &str) -> Option<String> {
    let hex = name
        .strip_prefix(NAME_PREFIX)
        .filter(|h| is_hex_suffix(h))?;
    Some(format!("{ID_PREFIX}{hex}"))
}

/// A new CodeContainer name: `cntr-` and 32 random hex digits.
pub fn new_container_name() -> String {
    use rand::Rng;
    let bytes: [u8; NEW_ID_HEX / 2] = rand::rng().random();
    format!("{NAME_PREFIX}{}", hex::encode(bytes))
}

/// Where a path of the container's folder is, as a program in it sees it.
pub fn data_path(relative: &str) -> String {
    format!("{CONTAINER_DATA_DIR}/{relative}")
}

/// A container's `status`: `running` while it lives (starting included, as OpenAI shows
/// it), then `expired` (idle too long), `deleted` (stopped) or `failed`.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ContainerStatusName {
    Running,
    Expired,
    Deleted,
    Failed,
}

/// OpenAI's memory sizes of a container.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum MemoryLimitName {
    #[serde(rename = "1g")]
    OneGig,
    #[serde(rename = "4g")]
    FourGig,
    #[serde(rename = "16g")]
    SixteenGig,
    #[serde(rename = "64g")]
    SixtyFourGig,
}

/// `expires_after.anchor`.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ExpiresAfterAnchor {
    LastActiveAt,
}

/// When a container expires: `minutes` after its last activity (a run or a file change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExpiresAfter {
    /// Always `last_active_at`.
    #[schema(value_type = ExpiresAfterAnchor)]
    pub anchor: String,
    #[schema(minimum = 1, maximum = 1440)]
    pub minutes: u32,
}

/// A container: a sandbox whose interpreters (one per language) and folder (`/mnt/data`)
/// last between runs. Timestamps are unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Container {
    #[schema(
        example = "cntr_0123456789abcdef0123456789abcdef",
        pattern = r"^cntr_[0-9a-f]{1,58}$"
    )]
    pub id: String,
    /// Always `container`.
    #[schema(example = "container")]
    pub object: String,
    pub created_at: i64,
    #[schema(value_type = ContainerStatusName)]
    pub status: String,
    pub expires_after: ExpiresAfter,
    /// The last run or file change (its creation until there is one).
    pub last_active_at: i64,
    pub name: String,
    #[schema(value_type = MemoryLimitName)]
    pub memory_limit: String,
}

fn seconds(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<i64> {
    t.map(|t| t.0.as_second())
}

/// The API status of a container in this phase (none yet: it is starting).
pub fn status_of(phase: Option<ContainerPhase>) -> &'static str {
    phase.map_or("running", ContainerPhase::as_api_status)
}

/// The container as its CodeContainer tells it; `None` for one the REST API did not name.
pub fn from_cr(c: &CodeContainer) -> Option<Container> {
    let id = id_of(c.metadata.name.as_deref()?)?;
    let created_at = seconds(c.metadata.creation_timestamp.as_ref()).unwrap_or_default();
    let status = c.status.as_ref();
    Some(Container {
        id,
        object: "container".into(),
        created_at,
        status: status_of(c.phase()).into(),
        expires_after: ExpiresAfter {
            anchor: ANCHOR.into(),
            minutes: c.spec.idle_minutes,
        },
        last_active_at: seconds(status.and_then(|s| s.last_active_at.as_ref()))
            .unwrap_or(created_at),
        name: c.spec.display_name.clone().unwrap_or_default(),
        memory_limit: c.spec.memory_limit.as_str().into(),
    })
}

/// Who put a file in a container.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ContainerFileSource {
    /// Uploaded (or copied from an uploaded file) through the API.
    User,
    /// Written by a program run in the container.
    Assistant,
}

/// A file in a container's folder. Its id is a stored file's id (a file a run wrote is
/// that run's output file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ContainerFileObject {
    pub id: String,
    /// Always `container.file`.
    #[schema(example = "container.file")]
    pub object: String,
    pub created_at: i64,
    pub bytes: u64,
    pub container_id: String,
    /// Where programs in the container find it.
    #[schema(example = "/mnt/data/data.csv")]
    pub path: String,
    #[schema(value_type = ContainerFileSource)]
    pub source: String,
}

fn source_name(source: FileSource) -> &'static str {
    match source {
        FileSource::User => "user",
        FileSource::Assistant => "assistant",
    }
}

/// A file of the container's folder as the store's index has it; `container_id` is the
/// container's id (the index names its CodeContainer).
pub fn file_object(f: &ContainerFile, container_id: &str) -> ContainerFileObject {
    ContainerFileObject {
        id: f.id.clone(),
        object: "container.file".into(),
        created_at: f.created_at,
        bytes: f.bytes,
        container_id: container_id.to_string(),
        path: data_path(&f.path),
        source: source_name(f.source).into(),
    }
}

/// What deleting a container answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ContainerDeleted {
    pub id: String,
    /// Always `container.deleted`.
    #[schema(example = "container.deleted")]
    pub object: String,
    pub deleted: bool,
}

/// What deleting a container's file answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ContainerFileDeleted {
    pub id: String,
    /// Always `container.file.deleted`.
    #[schema(example = "container.file.deleted")]
    pub object: String,
    pub deleted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use codeinterp_crds::{CodeContainerSpec, CodeContainerStatus, MemoryLimit};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use pretty_assertions::assert_eq;

    fn time(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn cr(name: &str, status: Option<CodeContainerStatus>) -> CodeContainer {
        let mut c = CodeContainer::new(
            name,
            CodeContainerSpec {
                display_name: Some("analysis".into()),
                memory_limit: MemoryLimit::FourGig,
                idle_minutes: 30,
                file_ops: vec![],
                stop: None,
            },
        );
        c.metadata.creation_timestamp = Some(time(100));
        c.status = status;
        c
    }

    #[test]
    fn ids_and_names_map_one_to_one() {
        let name = new_container_name();
        assert_eq!(name.len(), NAME_PREFIX.len() + 32);
        let id = id_of(&name).unwrap();
        assert!(id.starts_with("cntr_"));
        assert_eq!(name_of(&id).as_deref(), Some(name.as_str()));
        assert_ne!(new_container_name(), name);
        let longest = format!("cntr_{}", "a".repeat(MAX_ID_HEX));
        assert_eq!(name_of(&longest).unwrap().len(), 63);
        assert_eq!(id_of(&name_of(&longest).unwrap()), Some(longest));
    }

    #[test]
    fn anything_else_is_not_a_container_id() {
        for bad in [
            "",
            "cntr_",
            "cntr-abc",
            "cntr_ABC",
            "cntr_abg",
            "cntr_ab/../x",
            "run-abc",
            "file-abc",
            &format!("cntr_{}", "a".repeat(MAX_ID_HEX + 1)),
        ] {
            assert_eq!(name_of(bad), None, "{bad:?}");
        }
        assert_eq!(id_of("my-container"), None);
        assert_eq!(id_of("cntr_abc"), None);
    }

    #[test]
    fn the_pattern_in_the_document_is_the_one_checked() {
        let pattern = CONTAINER_ID_PATTERN;
        assert!(
            pattern.contains(&format!("{{1,{MAX_ID_HEX}}}")),
            "{pattern}"
        );
    }

    #[test]
    fn a_new_container_is_running_and_active_since_its_creation() {
        let c = from_cr(&cr("cntr-ab12", None)).unwrap();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({
                "id": "cntr_ab12", "object": "container", "created_at": 100,
                "status": "running",
                "expires_after": {"anchor": "last_active_at", "minutes": 30},
                "last_active_at": 100, "name": "analysis", "memory_limit": "4g"
            })
        );
    }

    #[test]
    fn each_phase_has_its_openai_status() {
        let with = |phase| CodeContainerStatus {
            phase: Some(phase),
            last_active_at: Some(time(500)),
            ..Default::default()
        };
        let cases = [
            (ContainerPhase::Starting, "running"),
            (ContainerPhase::Running, "running"),
            (ContainerPhase::Expired, "expired"),
            (ContainerPhase::Stopped, "deleted"),
            (ContainerPhase::Failed, "failed"),
        ];
        for (phase, want) in cases {
            let c = from_cr(&cr("cntr-1", Some(with(phase)))).unwrap();
            assert_eq!(c.status, want, "{phase:?}");
            assert_eq!(c.last_active_at, 500);
        }
    }

    #[test]
    fn the_documented_statuses_are_those_answered() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(ContainerStatusName::schema()).unwrap();
        let mut answered: Vec<&str> = [
            None,
            Some(ContainerPhase::Starting),
            Some(ContainerPhase::Running),
            Some(ContainerPhase::Expired),
            Some(ContainerPhase::Stopped),
            Some(ContainerPhase::Failed),
        ]
        .into_iter()
        .map(status_of)
        .collect();
        answered.dedup();
        assert_eq!(schema["enum"], serde_json::json!(answered));
        let limits = serde_json::to_value(MemoryLimitName::schema()).unwrap();
        let names: Vec<&str> = MemoryLimit::ALL
            .into_iter()
            .map(MemoryLimit::as_str)
            .collect();
        assert_eq!(limits["enum"], serde_json::json!(names));
    }

    #[test]
    fn a_container_the_api_did_not_name_is_not_shown() {
        assert!(from_cr(&cr("made-by-hand", None)).is_none());
    }

    #[test]
    fn a_folder_entry_is_a_container_file_under_mnt_data() {
        let f = ContainerFile {
            id: "file-9".into(),
            container: "cntr-ab".into(),
            tenant: "acme".into(),
            path: "out/r.csv".into(),
            bytes: 7,
            created_at: 42,
            source: FileSource::Assistant,
        };
        assert_eq!(
            serde_json::to_value(file_object(&f, "cntr_ab")).unwrap(),
            serde_json::json!({
                "id": "file-9", "object": "container.file", "created_at": 42, "bytes": 7,
                "container_id": "cntr_ab", "path": "/mnt/data/out/r.csv", "source": "assistant"
            })
        );
    }
}
