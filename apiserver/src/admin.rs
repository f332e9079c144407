//! `/admin`: one static page, embedded in the binary, that runs code, lists recent runs and
//! shows a container's runs as a notebook (and runs more cells in it), through the public
//! API. Its inline style and script are allowed by hash, so the page's
//! Content-Security-Policy can forbid everything else (no inline handlers, no other origin).
use std::sync::LazyLock;

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::state::AppState;

pub const PAGE: &str = include_str!("admin.html");

static CSP: LazyLock<String> = LazyLock::new(|| content_security_policy(PAGE));

pub fn router() -> Router<AppState> {
    Router::new().route("/admin", get(page))
}

/// The text of every `<tag>...</tag>` element in the page.
fn inline_blocks<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    out
}

fn hashes(blocks: &[&str]) -> String {
    blocks
        .iter()
        .map(|b| {
            let digest = Sha256::digest(b.as_bytes());
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A policy that allows exactly the page's own inline style and script, and requests to
/// this origin.
pub fn content_security_policy(html: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes(&inline_blocks(html, "script")),
        hashes(&inline_blocks(html, "style")),
    )
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, CSP.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Html(PAGE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_pages_own_script_and_style_by_hash_only() {
        let csp = content_security_policy(PAGE);
        assert!(csp.starts_with("default-src 'none'"));
        assert!(!csp.contains("unsafe-inline"));
        assert!(!csp.contains("unsafe-eval"));
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
    }

    #[test]
    fn the_page_has_the_ids_tests_drive_it_by() {
        for id in [
            "token",
            "language",
            "code",
            "stdin",
            "run",
            "status",
            "stdout",
            "stderr",
            "exit-code",
            "usage",
            "artifacts",
            "runs",
            "containers",
            "notebook",
            "cell-language",
            "cell-code",
            "cell-run",
        ] {
            assert!(PAGE.contains(&format!("id=\"{id}\"")), "missing #{id}");
        }
    }

    #[test]
    fn the_page_uses_no_inline_handlers_or_style_attributes_nor_other_origins() {
        assert!(!PAGE.contains(" onclick="));
        assert!(!PAGE.contains(" style=\""));
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        assert!(!PAGE.contains("innerHTML"));
    }

    #[test]
    fn inline_blocks_are_found_in_order() {
        let html = "<style>a</style><script>b</script><script>c</script>";
        assert_eq!(inline_blocks(html, "script"), ["b", "c"]);
        assert_eq!(inline_blocks(html, "style"), ["a"]);
    }
}
