//! A path-parameter extractor whose rejections are contract errors.
//!
//! Threat: a path segment that percent-decodes to invalid UTF-8 (`/api/tasks/%ff`)
//! or does not parse reaching axum's own rejection, a `text/plain` body
//! outside the error shape that names the parameter and the reason.
//! Guarantee: `Path<T>` yields a `T` or a 400 `bad_request` [`ApiError`]
//! whose message never echoes the segment.

use axum::extract::{FromRequestParts, Path as AxumPath};
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
