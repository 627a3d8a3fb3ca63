//! Cursor paging for the list endpoints of every public API: `?limit=` (1
//! to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent) and `?cursor=`, the
//! `next_cursor` of the page before. A page is in key order and starts
//! after the key its cursor carries, so rows that stay put are neither
//! skipped nor repeated while a client walks the pages, whatever is added
//! or removed meanwhile.
//!
//! A cursor is the key, hex-encoded: opaque to clients, and safe in a query
//! string whatever the key is made of. Any even run of hex digits but `00`
//! pairs is a cursor (a position among the keys), so a made-up one is no
//! error; API documents state that shape as
//! `^(0[1-9a-fA-F]|[1-9a-fA-F][0-9a-fA-F]){0,512}$`.

use serde::Serialize;

/// Rows on a page when the request names no limit.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most rows a page holds.
pub const MAX_LIMIT: u32 = 200;
/// The longest key a cursor may carry.
const MAX_KEY: usize = 512;

/// A query parameter that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PageError {
    pub field: &'static str,
    pub message: &'static str,
}

/// What a request asked for: how many rows, after which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<String>,
}

impl PageRequest {
    /// Reads `?limit=` and `?cursor=`.
    pub fn new(limit: Option<u32>, cursor: Option<&str>) -> Result<PageRequest, PageError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(PageError {
                field: "limit",
                message: "must be between 1 and 200",
            });
        }
        let after = cursor
            .filter(|c| !c.is_empty())
            .map(|cursor| {
                hex::decode(cursor)
                    .ok()
                    .filter(|key| key.len() <= MAX_KEY)
                    .map(|key| String::from_utf8_lossy(&key).into_owned())
                    // No database takes a NUL in text.
                    .filter(|key| !key.contains('\0'))
                    .ok_or(PageError {
                        field: "cursor",
                        message: "is not a cursor this API gave out",
                    })
            })
            .transpose()?;
        Ok(PageRequest { limit, after })
    }

    /// Rows to fetch: one more than the page holds, to learn whether
    /// another page follows.
    pub fn fetch(&self) -> i64 {
        i64::from(self.limit) + 1
    }

    /// The page of `rows` (fetched with [`PageRequest::fetch`]), each shown
    /// as `view`, with a cursor after the last when more rows follow.
    pub fn page<T, V>(
        &self,
        mut rows: Vec<T>,
        key: impl Fn(&T) -> String,
        view: impl Fn(&T) -> V,
    ) -> Page<V> {
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = rows
            .last()
            .filter(|_| more)
            .map(|last| hex::encode(key(last)));
        Page {
            items: rows.iter().map(view).collect(),
            next_cursor,
        }
    }
}

/// One page of a listing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_one_another_by_key() {
        let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
        let first = PageRequest::new(Some(2), None).unwrap();
        assert_eq!(first.fetch(), 3);
        let page = first.page(keys[..3].to_vec(), Clone::clone, Clone::clone);
        assert_eq!(page.items, ["k0", "k1"]);
        let cursor = page.next_cursor.unwrap();
        let next = PageRequest::new(Some(2), Some(&cursor)).unwrap();
        assert_eq!(next.after.as_deref(), Some("k1"));
        let last = next.page(keys[2..4].to_vec(), Clone::clone, Clone::clone);
        assert_eq!(
            last.next_cursor, None,
            "no row beyond the limit: the last page"
        );
    }

    #[test]
    fn bad_limits_and_cursors_are_named() {
        for limit in [0, MAX_LIMIT + 1] {
            assert_eq!(
                PageRequest::new(Some(limit), None).unwrap_err().field,
                "limit"
            );
        }
        for cursor in ["zz", "abc", "6100", &"61".repeat(MAX_KEY + 1)] {
            assert_eq!(
                PageRequest::new(None, Some(cursor)).unwrap_err().field,
                "cursor",
                "{cursor}"
            );
        }
        assert_eq!(PageRequest::new(None, Some("")).unwrap().after, None);
        // Made up, but of the right shape: a position like any other.
        assert!(PageRequest::new(None, Some("ff")).unwrap().after.is_some());
    }
}
