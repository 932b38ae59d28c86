//! Paging of the admin and identity lists (`limit`, `cursor`): one reading
//! of the parameters for every list but the task list (which pages by
//! creation time with its own cursor and a lower maximum).

use crate::http::ApiError;

const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// The value of query parameter `name` (from [`crate::http::query::params`]).
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The `limit` parameter: 1 to [`MAX_LIMIT`], 100 when absent (400
/// `validation_failed` naming it otherwise).
pub fn limit_param(params: &[(String, String)]) -> Result<usize, ApiError> {
    match param(params, "limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(crate::http::respond::field_error(
                "limit",
                format!("must be an integer from 1 to {MAX_LIMIT}"),
            )),
        },
    }
}

/// One page of `rows` ordered by id (the ids are time-ordered), after the
/// `cursor` parameter's id, at most the `limit` parameter's rows; the next
/// cursor when more follow. For lists kept whole in memory (users, keys).
pub fn page_by_id<T>(
    mut rows: Vec<T>,
    id: impl Fn(&T) -> &str,
    params: &[(String, String)],
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let limit = limit_param(params)?;
    let cursor = param(params, "cursor").unwrap_or("");
    // an id as `store::new_id` makes them (32 lowercase hex digits), as
    // `next_cursor` gives it: anything else is no page's cursor (400, like
    // the task list's, not an empty page)
    let id_shaped = cursor.len() == 32
        && cursor
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !cursor.is_empty() && !id_shaped {
        return Err(crate::http::respond::field_error(
            "cursor",
            "invalid cursor",
        ));
    }
    rows.retain(|r| id(r) > cursor);
    rows.sort_by(|a, b| id(a).cmp(id(b)));
    let next = (rows.len() > limit)
        .then(|| {
            limit
                .checked_sub(1)
                .and_then(|i| rows.get(i))
                .map(|r| id(r).to_string())
        })
        .flatten();
    rows.truncate(limit);
    Ok((rows, next))
}
