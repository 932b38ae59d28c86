//! A path-parameter extractor whose rejections are contract errors.
//!
//! Threat: a path segment that percent-decodes to invalid UTF-8 (`/api/tasks/%ff`)
//! or does not parse reaching axum's own rejection, a `text/plain` body
//! outside the error shape that names the parameter and the reason; one
//! that decodes to a control character (`/api/tasks/x%00`) reaching the
//! database, where PostgreSQL refuses a NUL in text (a 500 before this).
//! Guarantee: `Path<T>` yields a `T` whose parameters hold no control
//! character, or a 400 `bad_request` [`ApiError`] whose message never
//! echoes the segment.

use axum::extract::{FromRequestParts, Path as AxumPath, RawPathParams};
use http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;

/// Path parameters (extractor), like axum's `Path`.
#[derive(Debug, Clone, Copy)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // No identifier, address or name this API takes holds a control
        // character: such a parameter is malformed, on every backend alike.
        if let Ok(raw) = RawPathParams::from_request_parts(parts, state).await {
            if raw.iter().any(|(_, v)| v.chars().any(char::is_control)) {
                return Err(ApiError::BadRequest(
                    "a path parameter is malformed (it holds a control character)".into(),
                ));
            }
        }
        match AxumPath::<T>::from_request_parts(parts, state).await {
            Ok(AxumPath(v)) => Ok(Path(v)),
            Err(rej) => {
                tracing::debug!(rejection = %rej.body_text(), "path parameters rejected");
                Err(ApiError::BadRequest(
                    "a path parameter is malformed (it must be valid UTF-8 once percent-decoded)"
                        .into(),
                ))
            }
        }
    }
}
