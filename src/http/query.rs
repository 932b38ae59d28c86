//! Query strings: one reading for every endpoint that takes one.
//!
//! Threat: HTTP parameter pollution — `?status=queued&status=done` read as
//! the first value here, the last by a proxy, a cache or a gateway's
//! upstream, so that what was checked is not what is used. Before this
//! module the task list kept the last value, the security lists the first
//! and only the audit list refused the repetition.
//! Guarantee: [`params`] yields each name once, percent-decoded (`+` as a
//! blank); a name given twice is a 400 `validation_failed` naming it, before
//! any handler reads a value.

use std::collections::BTreeMap;

use super::{ApiError, FieldErrors};

/// The query's parameters in order, each name once (see the module doc).
pub fn params(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let raw = raw.unwrap_or("");
    // the decoder would put U+FFFD where bytes are not UTF-8 and search for
    // that: refuse instead, as a path with such bytes is refused
    if raw.contains('%')
        && raw.split('&').any(|part| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .is_err()
        })
    {
        return Err(ApiError::BadRequest(
            "the query string is not UTF-8 once percent-decoded".into(),
        ));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
        .map_err(|_| ApiError::BadRequest("malformed query string".into()))?;
    let mut seen = std::collections::HashSet::new();
    let mut errors: FieldErrors = BTreeMap::new();
    for (k, _) in &pairs {
        if !seen.insert(k.as_str()) {
            errors
                .entry(k.chars().take(64).collect())
                .or_insert_with(|| vec!["given more than once".into()]);
        }
    }
    if errors.is_empty() {
        Ok(pairs)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// [`params`], refusing any name not in `allowed` with 400
/// `validation_failed` (a misspelt filter never silently widens a result).
pub fn params_only(raw: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs = params(raw)?;
    let errors: FieldErrors = pairs
        .iter()
        .filter(|(k, _)| !allowed.contains(&k.as_str()))
        .map(|(k, _)| {
            (
                k.chars().take(64).collect(),
                vec!["unknown query parameter".into()],
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(pairs)
    } else {
        Err(ApiError::Validation(errors))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn each_name_once_decoded_in_order() {
        let p = params(Some("q=a+b%26c&limit=5&cursor=")).unwrap();
        assert_eq!(
            p,
            vec![
                ("q".to_string(), "a b&c".to_string()),
                ("limit".into(), "5".into()),
                ("cursor".into(), "".into()),
            ]
        );
        assert!(params(None).unwrap().is_empty());
        assert!(params(Some("")).unwrap().is_empty());
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused() {
        for raw in ["q=%c3", "q=%ff%fe", "%80=1", "a=1&q=x%e2%82"] {
            assert!(
                matches!(params(Some(raw)), Err(ApiError::BadRequest(_))),
                "{raw}"
            );
        }
        let p = params(Some("q=%C3%A9t%C3%A9&r=%E2%82%AC")).unwrap();
        let values: Vec<&str> = p.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, ["été", "€"]);
    }

    #[test]
    fn a_repeated_name_is_a_validation_error_naming_it() {
        for raw in [
            "status=queued&status=done",
            "a=1&status=x&status=x",
            "status&status=",
        ] {
            match params(Some(raw)) {
                Err(ApiError::Validation(f)) => {
                    assert_eq!(f.keys().collect::<Vec<_>>(), vec!["status"], "{raw}");
                }
                other => panic!("{raw}: {other:?}"),
            }
        }
        // the same name spelled with an escape is the same name
        assert!(params(Some("q=a&%71=b")).is_err());
    }

    #[test]
    fn only_the_allowed_names_pass() {
        assert_eq!(params_only(Some("limit=2"), &["limit"]).unwrap().len(), 1);
        match params_only(Some("limit=2&bogus=1"), &["limit"]) {
            Err(ApiError::Validation(f)) => {
                assert_eq!(f.keys().collect::<Vec<_>>(), vec!["bogus"]);
            }
            other => panic!("{other:?}"),
        }
    }
}
