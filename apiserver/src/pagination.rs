//! Cursor pagination of lists ordered newest first: `limit` items after the item `after`.
//! Pure.
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;

pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;

/// `{object: "list", data, has_more, first_id, last_id}`.
#[derive(Debug, PartialEq, Serialize, ToSchema)]
pub struct Page<T> {
    /// Always `list`.
    #[schema(example = "list")]
    pub object: &'static str,
    pub data: Vec<T>,
    pub has_more: bool,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

/// Checks a `limit` query parameter: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub fn check_limit(limit: Option<i64>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT as i64).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::invalid(
            format!("limit is {n}; it must be from 1 to {MAX_LIMIT}"),
            "limit".to_string(),
        )),
    }
}

/// The page of `items` (already in order) that follows the item whose id is `after`.
pub fn paginate<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> &str,
    limit: usize,
    after: Option<&str>,
) -> Result<Page<T>, ApiError> {
    let start = match after {
        None => 0,
        Some(cursor) => {
            items
                .iter()
                .position(|item| id(item) == cursor)
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("after is {cursor:?}, which is not an id in this list"),
                        "after".to_string(),
                    )
                })?
                + 1
        }
    };
    let has_more = items.len() > start + limit;
    let data: Vec<T> = items.into_iter().skip(start).take(limit).collect();
    Ok(Page {
        object: "list",
        first_id: data.first().map(|d| id(d).to_string()),
        last_id: data.last().map(|d| id(d).to_string()),
        has_more,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("run-{i}")).collect()
    }

    #[test]
    fn the_first_page_has_the_newest_items() {
        let page = paginate(ids(5), |s| s, 2, None).unwrap();
        assert_eq!(page.data, ["run-0", "run-1"]);
        assert!(page.has_more);
        assert_eq!(page.object, "list");
        assert_eq!(page.first_id.as_deref(), Some("run-0"));
        assert_eq!(page.last_id.as_deref(), Some("run-1"));
    }

    #[test]
    fn after_continues_where_the_last_page_ended() {
        let page = paginate(ids(5), |s| s, 2, Some("run-1")).unwrap();
        assert_eq!(page.data, ["run-2", "run-3"]);
        assert!(page.has_more);
        let page = paginate(ids(5), |s| s, 2, Some("run-3")).unwrap();
        assert_eq!(page.data, ["run-4"]);
        assert!(!page.has_more);
        let page = paginate(ids(5), |s| s, 2, Some("run-4")).unwrap();
        assert!(page.data.is_empty());
        assert_eq!(page.first_id, None);
        assert!(!page.has_more);
    }

    #[test]
    fn an_exact_fit_has_no_more() {
        let page = paginate(ids(2), |s| s, 2, None).unwrap();
        assert!(!page.has_more);
    }

    #[test]
    fn an_unknown_cursor_is_a_client_error() {
        let e = paginate(ids(3), |s| s, 2, Some("run-x")).unwrap_err();
        assert_eq!(e.body().error.param.as_deref(), Some("after"));
    }

    #[test]
    fn limit_is_from_1_to_100_and_20_by_default() {
        assert_eq!(check_limit(None).unwrap(), 20);
        assert_eq!(check_limit(Some(1)).unwrap(), 1);
        assert_eq!(check_limit(Some(100)).unwrap(), 100);
        assert!(check_limit(Some(0)).is_err());
        assert!(check_limit(Some(101)).is_err());
        assert!(check_limit(Some(-1)).is_err());
    }
}
