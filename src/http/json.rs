//! A JSON body extractor whose rejections are contract errors.
//!
//! Threat: malformed, oversized, deeply nested or mistyped bodies reaching a
//! handler, or axum's plain-text rejections escaping the error shape.
//! Guarantee: `Json<T>` yields a `T` or an [`ApiError`]: 415 for a body that is
//! not `application/json`, 413 over the body limit, 400 for invalid UTF-8,
//! syntax, nesting deeper than serde_json's recursion limit (128) and type
//! mismatches (the message names the field, never echoes a value).
//!
//! Threat also: an object that names a member twice (`{"role": "user",
//! "role": "admin"}`). JSON leaves its meaning open — serde_json and
//! Python keep the last, other parsers the first — so a proxy, a log reader
//! or a check in front and the handler can each act on a different value.
//! Guarantee: such a body is refused with 400 `bad_request` at every depth.
//! The extractor only accepts a [`RequestBody`]: a derived `Deserialize`
//! refuses repeated fields itself, free-form bodies are [`UniqueValue`] (a
//! bare `serde_json::Value` would keep the last).
//!
//! Malformed JSON (broken syntax, not UTF-8, a repeated member) is 400
//! `bad_request`; well-formed JSON of the wrong shape (an array where an
//! object belongs, a missing, unknown or mistyped field) is the route's
//! input rules broken: 400 `validation_failed` with `fields`. Every route
//! therefore takes a [`UniqueValue`] and checks its shape itself
//! ([`UniqueValue::into_object`], then its schema): serde's own messages
//! for a derived struct would name Rust types.

use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::{DeserializeOwned, Error as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

use super::ApiError;

/// JSON request body (extractor) or response body (responder).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// Is this `Content-Type` the contract's `application/json` (optionally
/// with parameters) in UTF-8? Other JSON-based types
/// (`application/merge-patch+json`, `application/vnd.api+json`,
/// `application/problem+json`) carry their own semantics, which Frenly
/// does not implement: the contract says `application/json` and "anything
/// else -> 415", so they are refused (they were accepted). JSON exchanged
/// between systems is UTF-8 (RFC 8259 8.1) and is read as UTF-8 here: a
/// `charset` naming anything else would have these bytes read one way here
/// (and by the IDS) and another by whatever decodes them by the label.
pub fn is_json_content_type(value: &http::HeaderValue) -> bool {
    let Ok(s) = value.to_str() else { return false };
    let mut parts = s.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json"
        && parts.all(|p| match p.split_once('=') {
            Some((name, v)) if name.trim().eq_ignore_ascii_case("charset") => {
                let v = v.trim().trim_matches('"');
                v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
            }
            _ => true,
        })
}

/// A type a request body may be parsed into: one that refuses an object
/// naming a member twice (module docs). Implement it for a struct whose
/// `Deserialize` is derived without `flatten` or map fields (serde's derive
/// refuses a repeated field; a `Value` field must be one the handler
/// refuses unless it is a scalar, as `NewBan`'s are).
pub trait RequestBody: DeserializeOwned {}

/// Any JSON value whose objects, at every depth, name each member once.
#[derive(Debug, Clone, PartialEq)]
pub struct UniqueValue(pub Value);

impl RequestBody for UniqueValue {}

impl UniqueValue {
    /// The body's members, or `validation_failed` naming `body` when it is
    /// not a JSON object.
    pub fn into_object(self) -> Result<Map<String, Value>, ApiError> {
        match self.0 {
            Value::Object(m) => Ok(m),
            _ => Err(super::respond::field_error(
                "body",
                "the body must be a JSON object",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for UniqueValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(UniqueValue)
    }
}

/// Builds a [`Value`] as serde_json's own visitor does, refusing a member
/// name an object already has.
struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // A number that reaches here is exact: `parse` refused the literals
        // a double cannot hold (integers past 64 bits, underflow), and
        // `float_roundtrip` parses the rest to the correctly rounded
        // double, which serde_json writes back as its shortest text.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(UniqueValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let UniqueValue(v) = map.next_value()?;
            match members.entry(name) {
                Entry::Vacant(slot) => {
                    slot.insert(v);
                }
                Entry::Occupied(taken) => return Err(A::Error::custom(duplicate(taken.key()))),
            }
        }
        Ok(Value::Object(members))
    }
}

/// The message for a repeated member, worded as serde's derive words it
/// for a struct: its name only when it is a plain identifier (a name can
/// carry a payload too).
fn duplicate(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if plain {
        format!("duplicate field `{name}`")
    } else {
        "duplicate field".into()
    }
}

impl<T, S> FromRequest<S> for Json<T>
where
    T: RequestBody,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !labelled_json(&req) {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse(&read_body(req, state).await?).map(Json)
    }
}

/// Is the request's `Content-Type` JSON ([`is_json_content_type`])?
fn labelled_json(req: &Request) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(is_json_content_type)
}

/// The request's body: 413 over the body limit, 400 when it cannot be read.
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|rej| match rej.status() {
            http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            _ => ApiError::BadRequest("the request body could not be read".into()),
        })
}

/// The body of a route that takes none (claim, rotate, revoke, logout,
/// the deletions): nothing, or well-formed JSON that is ignored (a
/// client's `{}`). Anything else is refused as a body is on every route
/// (415 not JSON, 413 over the limit, 400 malformed), before the route acts:
/// a malformed body was ignored while a key was rotated or a task claimed.
#[derive(Debug, Clone, Copy)]
pub struct NoBody;

impl<S> FromRequest<S> for NoBody
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = labelled_json(&req);
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Ok(NoBody);
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse::<UniqueValue>(&bytes).map(|_| NoBody)
    }
}

/// Parse a JSON body into `T`, with contract errors.
pub fn parse<T: RequestBody>(bytes: &[u8]) -> Result<T, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::BadRequest("the body is not valid UTF-8".into()));
    }
    let parsed = serde_json::from_slice(bytes).map_err(|e| {
        let msg = match e.classify() {
            serde_json::error::Category::Data => {
                format!("invalid JSON body: {}", strip_position(&e))
            }
            serde_json::error::Category::Eof => "invalid JSON body: unexpected end of input".into(),
            _ => format!("malformed JSON body: {}", strip_position(&e)),
        };
        ApiError::BadRequest(msg)
    });
    // Malformed JSON is reported first; a well-formed body is then checked
    // for numbers that would not come back as they were sent.
    let value = parsed?;
    match inexact_number(bytes) {
        Some(why) => Err(ApiError::BadRequest(why.into())),
        None => Ok(value),
    }
}

/// Why a number literal of this (well-formed) JSON text would not be kept
/// exactly, if one would not: every value is held as a 64-bit integer or a
/// double, and written back from that.
///
/// - An integer literal (no fraction, no exponent) outside
///   `-2^63 ..= 2^64 - 1` would become the nearest double: a Python
///   client's `2**64 + 1` came back as `18446744073709551616.0`.
/// - A non-zero literal whose magnitude is below the smallest double
///   (`1e-400`) would become `0.0`.
///
/// Every other literal is kept: a fraction or exponent form is parsed to
/// the correctly rounded double (`float_roundtrip`), so whatever a client
/// wrote from a double (`1e+20`, `1.7976931348623157e308`,
/// `14871.466378840501`) comes back as the same double. A literal too large
/// for a double (`1e400`) is refused by serde_json itself.
fn inexact_number(text: &[u8]) -> Option<&'static str> {
    let mut i = 0;
    let mut in_string = false;
    while let Some(&b) = text.get(i) {
        if in_string {
            // to the string's next quote or escape at once (SIMD): a 1 KB
            // task is nearly all string, and a byte at a time cost 14,000
            // instructions a request
            let rest = text.get(i..).unwrap_or_default();
            match memchr::memchr2(b'"', b'\\', rest) {
                Some(at) if rest.get(at) == Some(&b'\\') => i += at + 2,
                Some(at) => {
                    in_string = false;
                    i += at + 1;
                }
                None => return None,
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while text
                    .get(i)
                    .is_some_and(|c| matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    i += 1;
                }
                let literal = text.get(start..i).unwrap_or_default();
                if let Some(why) = inexact_literal(literal) {
                    return Some(why);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// [`inexact_number`] for one number literal.
fn inexact_literal(literal: &[u8]) -> Option<&'static str> {
    let text = std::str::from_utf8(literal).ok()?;
    if !literal.iter().any(|c| matches!(c, b'.' | b'e' | b'E')) {
        let fits = text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok();
        return (!fits).then_some(
            "an integer outside the 64-bit range (-2^63 to 2^64-1) would not be kept exactly; send it as a string",
        );
    }
    let mantissa = text.split(['e', 'E']).next().unwrap_or_default();
    let nonzero = mantissa.bytes().any(|c| matches!(c, b'1'..=b'9'));
    let zero = text.parse::<f64>().is_ok_and(|v| v == 0.0);
    (nonzero && zero).then_some(
        "a number too close to zero for a 64-bit float would become 0; send it as a string",
    )
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_json_in_utf8() {
        let is = |v: &'static str| is_json_content_type(&http::HeaderValue::from_static(v));
        for v in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/json; charset=utf8; foo=bar",
        ] {
            assert!(is(v), "{v}");
        }
        for v in [
            "text/json",
            "application/jsonx",
            "application/json; charset=utf-16",
            "application/json; charset=iso-8859-1",
            "application/problem+json; charset=utf-7",
            "application/merge-patch+json",
            "application/vnd.api+json",
            "application/problem+json",
            "application/json+json",
            "text/plain",
        ] {
            assert!(!is(v), "{v}");
        }
    }

    fn message(e: ApiError) -> String {
        match e {
            ApiError::BadRequest(m) => m,
            other => panic!("not a 400 bad_request: {other:?}"),
        }
    }

    #[test]
    fn unique_values_are_what_serde_json_builds() {
        let text = r#"{"a":[1,-2,3.5,1e-300,1.5e18,"x",null,true,{"b":{}}],"c":{"d":"e"},"f":18446744073709551615,"g":-9223372036854775808}"#;
        let UniqueValue(v) = parse(text.as_bytes()).unwrap();
        assert_eq!(v, serde_json::from_str::<Value>(text).unwrap());
        let m = parse::<UniqueValue>(br#"{"k":1}"#)
            .unwrap()
            .into_object()
            .unwrap();
        assert_eq!(m.get("k"), Some(&Value::from(1)));
    }

    /// A Python client's `2**64 + 1` came back as 1.8446744073709552e19:
    /// integer literals past the 64-bit range are refused, not changed,
    /// and the message says what is wrong with them.
    #[test]
    fn integers_past_64_bits_are_refused_not_rounded() {
        for text in [
            &br#"{"input":{"n":18446744073709551616}}"#[..],
            br#"{"input":{"n":-9223372036854775809}}"#,
            br#"[1000000000000000000000000000000]"#,
        ] {
            let m = message(parse::<UniqueValue>(text).unwrap_err());
            assert!(m.contains("integer outside the 64-bit range"), "{m}");
        }
        for text in [&b"[18446744073709551615]"[..], b"[-9223372036854775808]"] {
            parse::<UniqueValue>(text).unwrap();
        }
    }

    /// `14871.466378840501` came back as `14871.4663788405` (serde_json's
    /// fast float parser is off by one unit in the last place for about one
    /// double in eight), and `1e+20` was refused as "a whole number beyond
    /// the 64-bit integer range": every double a client writes comes back
    /// as the same double.
    #[test]
    fn doubles_round_trip_exactly() {
        for v in [
            14_871.466_378_840_501_f64,
            -906_834.638_764_487_5,
            960_349.694_985_164_1,
            -22_073.799_048_388_842,
            0.1,
            1e20,
            -1e20,
            1.5e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            9_007_199_254_740_993.0,
        ] {
            for text in [
                format!("[{v:?}]"),
                format!("[{v:e}]"),
                format!("[{}]", serde_json::json!(v)),
            ] {
                let UniqueValue(back) = parse(text.as_bytes()).unwrap();
                assert_eq!(back[0].as_f64(), Some(v), "{text}");
                let again: Value = serde_json::from_str(&back.to_string()).unwrap();
                assert_eq!(again[0].as_f64(), Some(v), "{text} -> {back}");
            }
        }
        // the exponent forms other clients write
        for (text, v) in [
            ("[1e+20]", 1e20),
            ("[1E20]", 1e20),
            ("[1.0e-5]", 1e-5),
            ("[-0.0]", -0.0),
        ] {
            let UniqueValue(back) = parse(text.as_bytes()).unwrap();
            assert_eq!(back[0].as_f64(), Some(v), "{text}");
        }
    }

    /// `1e-400` was stored as 0.0: a literal that underflows is refused;
    /// zero itself and the smallest subnormal are kept; a number in a
    /// string is not a number.
    #[test]
    fn underflow_is_refused_not_zeroed() {
        for text in [
            &br#"{"v":1e-400}"#[..],
            br#"[-2.5E-999]"#,
            br#"[0.000001e-330]"#,
        ] {
            let m = message(parse::<UniqueValue>(text).unwrap_err());
            assert!(m.contains("too close to zero"), "{m}");
        }
        for text in [
            &br#"[0.0, 0e-400, -0E5, 5e-324, 0]"#[..],
            br#"{"s":"1e-400 and 99999999999999999999999","t":"\"1e-400"}"#,
        ] {
            parse::<UniqueValue>(text).unwrap();
        }
    }

    #[test]
    fn a_repeated_member_is_refused_at_any_depth() {
        for text in [
            &br#"{"title":"a","title":"b"}"#[..],
            br#"{"input":{"cmd":"ls","cmd":"rm -rf /"}}"#,
            br#"{"a":[{"x":1},{"y":1,"y":2}]}"#,
            br#"[{"z":1,"z":1}]"#,
        ] {
            let m = message(parse::<UniqueValue>(text).unwrap_err());
            assert!(m.contains("duplicate field"), "{m}");
        }
        let m = message(parse::<UniqueValue>(br#"{"role":"user","role":"admin"}"#).unwrap_err());
        assert!(m.contains("`role`"), "{m}");
        // a name that is not a plain identifier is not echoed
        let m = message(parse::<UniqueValue>(br#"{"<script>":1,"<script>":2}"#).unwrap_err());
        assert!(!m.contains("script"), "{m}");
        // the same name in different objects is fine
        parse::<UniqueValue>(br#"{"a":{"n":1},"b":{"n":2},"n":3}"#).unwrap();
    }

    #[test]
    fn an_object_body_must_be_an_object() {
        for text in [&b"[1]"[..], b"[]", b"\"x\"", b"1", b"null"] {
            match parse::<UniqueValue>(text).unwrap().into_object() {
                Err(ApiError::Validation(f)) => {
                    assert_eq!(f["body"], ["the body must be a JSON object"]);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
