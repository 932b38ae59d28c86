//! HTTP plumbing shared by every layer: the error shape ([`respond`]), the
//! request envelope (request id, security headers, panics), the JSON
//! body and path-parameter extractors whose every rejection is an
//! [`ApiError`], and the one reading of query strings ([`query`]).

pub mod envelope;
pub mod json;
pub mod path;
pub mod query;
pub mod respond;

pub use envelope::RequestId;
pub use json::{Json, NoBody, RequestBody, UniqueValue};
pub use path::Path;
pub use respond::{ApiError, FieldErrors};
