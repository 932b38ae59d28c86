//! HTTP plumbing shared by every layer: the error shape ([`respond`]), the
//! request envelope (request id, security headers, panics), and the JSON
//! body and path-parameter extractors whose every rejection is an
//! [`ApiError`].

pub mod envelope;
pub mod json;
pub mod path;
pub mod respond;

pub use envelope::RequestId;
pub use json::{Json, RequestBody, UniqueObject, UniqueValue};
pub use path::Path;
pub use respond::{ApiError, FieldErrors};
