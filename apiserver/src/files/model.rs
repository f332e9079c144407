//! The file objects of the wire (OpenAI's shapes), and the names files get: pure.
use codeinterp_store::FileMeta;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A stored file.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FileObject {
    pub id: String,
    /// Always `file`.
    #[schema(example = "file")]
    pub object: String,
    pub bytes: u64,
    pub created_at: i64,
    pub filename: String,
    /// `assistants` and the like for uploads, `assistants_output` for a run's output files.
    pub purpose: String,
    /// Always `processed` (kept for OpenAI SDKs).
    #[schema(example = "processed")]
    pub status: String,
}

impl From<FileMeta> for FileObject {
    fn from(m: FileMeta) -> Self {
        FileObject {
            id: m.id,
            object: "file".into(),
            bytes: m.bytes,
            created_at: m.created_at,
            filename: m.filename,
            purpose: m.purpose,
            status: "processed".into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FileDeleted {
    pub id: String,
    /// Always `file`.
    #[schema(example = "file")]
    pub object: String,
    pub deleted: bool,
}

/// The multipart form of an upload.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file's bytes (its filename is kept).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    purpose: FilePurpose,
}

/// What an upload is for: OpenAI's purposes. Output files a run wrote are
/// `assistants_output`.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum FilePurpose {
    Assistants,
    Batch,
    #[serde(rename = "fine-tune")]
    FineTune,
    Vision,
    UserData,
    Evals,
}

/// The purposes an upload may give, as OpenAI's files API takes them.
pub const PURPOSES: [&str; 6] = [
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

/// New file ids: `file-` and 24 random characters.
pub fn new_file_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..24)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("file-{suffix}")
}

/// The name kept for an upload: the last path component, without control characters, at
/// most 255 characters.
pub fn upload_filename(given: Option<&str>) -> Option<String> {
    let base = given?.rsplit(['/', '\\']).next()?;
    let clean: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    let clean = clean.trim().to_string();
    (!clean.is_empty() && clean != "." && clean != "..").then_some(clean)
}

/// A purpose an upload may give (one of [`PURPOSES`]).
pub fn valid_purpose(p: &str) -> bool {
    PURPOSES.contains(&p)
}

/// `Content-Disposition` for a download: a plain ASCII name, so no header injection and no
/// path; anything else becomes `_`.
pub fn content_disposition(filename: &str) -> String {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut safe: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    while safe.starts_with('.') {
        safe.remove(0);
    }
    if safe.is_empty() {
        safe = "file".into();
    }
    format!("attachment; filename=\"{safe}\"")
}

/// The image type a file is served as, shown inline: only one judged from its bytes when it
/// was stored (a run's output), and only these; anything else is bytes to download.
pub fn display_type(meta: &FileMeta) -> Option<&'static str> {
    match meta.content_type.as_deref()? {
        "image/png" => Some("image/png"),
        "image/jpeg" => Some("image/jpeg"),
        "image/gif" => Some("image/gif"),
        "image/webp" => Some("image/webp"),
        "image/svg+xml" => Some("image/svg+xml"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(content_type: Option<&str>) -> FileMeta {
        FileMeta {
            id: "file-1".into(),
            tenant: "acme".into(),
            bytes: 3,
            created_at: 9,
            filename: "a.txt".into(),
            purpose: "assistants".into(),
            sha256: "x".into(),
            run_id: None,
            content_type: content_type.map(str::to_string),
        }
    }

    #[test]
    fn downloads_are_named_with_a_safe_ascii_filename() {
        assert_eq!(
            content_disposition("plot.png"),
            "attachment; filename=\"plot.png\""
        );
        assert_eq!(
            content_disposition("a\"b\r\nSet-Cookie: x.txt"),
            "attachment; filename=\"a_b__Set-Cookie__x.txt\""
        );
        assert_eq!(
            content_disposition("out/sub/r.csv"),
            "attachment; filename=\"r.csv\""
        );
        assert_eq!(content_disposition("..."), "attachment; filename=\"file\"");
        assert_eq!(
            content_disposition("résumé.pdf"),
            "attachment; filename=\"r_sum_.pdf\""
        );
    }

    #[test]
    fn upload_names_keep_only_the_last_path_component() {
        assert_eq!(
            upload_filename(Some("data.csv")).as_deref(),
            Some("data.csv")
        );
        assert_eq!(
            upload_filename(Some("/etc/passwd")).as_deref(),
            Some("passwd")
        );
        assert_eq!(upload_filename(Some("a\u{0}b")).as_deref(), Some("ab"));
        assert_eq!(upload_filename(Some("dir/")), None);
        assert_eq!(upload_filename(Some("..")), None);
        assert_eq!(upload_filename(None), None);
    }

    #[test]
    fn purposes_are_openais() {
        assert!(valid_purpose("assistants"));
        assert!(valid_purpose("fine-tune"));
        assert!(valid_purpose("user_data"));
        assert!(!valid_purpose(""));
        assert!(!valid_purpose("Assistants"));
        assert!(!valid_purpose("null"));
        assert!(!valid_purpose("assistants_output"));
    }

    #[test]
    fn the_documented_purposes_are_those_accepted() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(FilePurpose::schema()).unwrap();
        assert_eq!(schema["enum"], serde_json::json!(PURPOSES));
    }

    #[test]
    fn file_ids_are_storage_safe_and_distinct() {
        let a = new_file_id();
        assert!(a.starts_with("file-") && a.len() == 29);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_ne!(a, new_file_id());
    }

    #[test]
    fn a_file_object_has_the_openai_fields() {
        let json = serde_json::to_value(FileObject::from(meta(None))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "file-1", "object": "file", "bytes": 3, "created_at": 9,
                "filename": "a.txt", "purpose": "assistants", "status": "processed"})
        );
    }

    #[test]
    fn only_the_image_types_stored_with_a_file_are_shown_inline() {
        assert_eq!(display_type(&meta(Some("image/png"))), Some("image/png"));
        assert_eq!(
            display_type(&meta(Some("image/svg+xml"))),
            Some("image/svg+xml")
        );
        assert_eq!(display_type(&meta(Some("text/html"))), None);
        assert_eq!(display_type(&meta(None)), None);
    }
}
