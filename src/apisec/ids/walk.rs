//! Streaming JSON inspection: every key is checked, every string value that
//! is not free text (or excluded) is checked, free-text subtrees are skipped
//! without being materialised. serde_json bounds the nesting at 128 levels
//! (its recursion limit), so a hostile 10,000-level document is refused
//! with an error instead of exhausting the stack.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{safe_name, Family, FieldSet, IdsError, Kind, PathSeg, Scan};

const STOP: &str = "frenly-ids-stop";

/// Walk a JSON body: `Ok(true)` when it was one well-formed document,
/// `Ok(false)` when it was malformed (walked up to the error: the caller
/// inspects the rest another way, since an upstream behind the gateway may
/// read what follows); `Err(TooDeep)` for nesting over the limit.
///
/// `truncated`: `body` is the inspection window of a longer body, cut
/// anywhere. It is then walked as a JSON prefix: the window ending before
/// the document does is its end, not a fault (`Ok(true)`); every value
/// complete inside it has been inspected by its location, and a string the
/// cut splits is inspected as far as it goes unless it is free text (or
/// excluded) — what follows the cut is not seen. Any other fault is still
/// `Ok(false)`.
pub(crate) fn json(
    scan: &mut Scan,
    body: &[u8],
    free: Option<&FieldSet>,
    exclude: Option<&FieldSet>,
    truncated: bool,
) -> Result<bool, IdsError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut path = Vec::new();
    let mut ctx = Ctx {
        scan,
        free,
        exclude,
        path: &mut path,
        cut: None,
    };
    let walked = (Node {
        ctx: &mut ctx,
        text: false,
    })
    .deserialize(&mut de);
    match walked.and_then(|()| de.end()) {
        Ok(()) => Ok(true),
        Err(e) => {
            if e.to_string().starts_with("recursion limit exceeded") {
                Err(IdsError::TooDeep)
            } else if truncated && e.is_eof() && !ctx.scan.done() {
                // the window's end: the string it splits, if any, is
                // inspected where it stands unless it is free text
                if let (Some(cut), Some(text)) = (ctx.cut.take(), open_string(body)) {
                    if !cut.free {
                        let loc = location(&cut.path);
                        ctx.scan.value(Kind::Value, &loc, &text, false);
                    }
                }
                Ok(true)
            } else {
                Ok(false)
            }
        }
    }
}

/// The string a JSON text that ends inside one leaves open, decoded as far
/// as it goes (an escape the end splits dropped); `None` when the text does
/// not end inside a string.
fn open_string(body: &[u8]) -> Option<String> {
    let mut in_str = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, &b) in body.iter().enumerate() {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
        } else if b == b'"' {
            in_str = true;
            start = i + 1;
        }
    }
    if !in_str {
        return None;
    }
    let mut raw = body.get(start..)?;
    // an escape split by the end: `\`, `\u`, `\u00`
    if escaped {
        raw = raw.get(..raw.len().saturating_sub(1))?;
    } else {
        let hex = raw
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if hex < 4 {
            if let Some(u) = raw.len().checked_sub(hex + 2) {
                if raw.get(u..u + 2) == Some(b"\\u".as_slice()) && !preceded_by_backslash(raw, u) {
                    raw = raw.get(..u)?;
                }
            }
        }
    }
    // a UTF-8 sequence split by the end becomes U+FFFD
    let quoted = format!("\"{}\"", String::from_utf8_lossy(raw));
    Some(serde_json::from_str::<String>(&quoted).unwrap_or_else(|_| {
        // undecodable escapes: the raw text, which the decoder reads too
        String::from_utf8_lossy(raw).into_owned()
    }))
}

/// Is the byte at `pos` itself escaped (an odd run of backslashes before it)?
fn preceded_by_backslash(raw: &[u8], pos: usize) -> bool {
    raw.get(..pos)
        .map(|r| r.iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1)
        .unwrap_or(false)
}

/// Where the walk stopped: the innermost value being read and whether it
/// is free text (or excluded), skipped.
struct Cut {
    path: Vec<PathSeg>,
    free: bool,
}

fn location(path: &[PathSeg]) -> String {
    let mut s = String::from("json:");
    for (i, seg) in path.iter().enumerate() {
        match seg {
            PathSeg::Key(k) => {
                if i > 0 {
                    s.push('.');
                }
                s.push_str(safe_name(k));
            }
            PathSeg::Index => s.push_str("[]"),
        }
    }
    s
}

struct Ctx<'c, 's> {
    scan: &'c mut Scan,
    free: Option<&'s FieldSet>,
    exclude: Option<&'s FieldSet>,
    path: &'c mut Vec<PathSeg>,
    /// Set by the innermost value whose reading failed.
    cut: Option<Cut>,
}

impl Ctx<'_, '_> {
    fn skipped(&self) -> bool {
        self.free.is_some_and(|f| f.covers(self.path))
            || self.exclude.is_some_and(|f| f.covers(self.path))
    }

    /// Is a string at this path free text (or excluded) by a `:string`
    /// pattern?
    fn free_string(&self) -> bool {
        self.free.is_some_and(|f| f.covers_string(self.path))
            || self.exclude.is_some_and(|f| f.covers_string(self.path))
    }

    fn location(&self) -> String {
        location(self.path)
    }

    /// Remember where reading failed (the innermost value only).
    fn note_cut(&mut self, free: bool) {
        if self.cut.is_none() {
            self.cut = Some(Cut {
                path: self.path.clone(),
                free,
            });
        }
    }
}

struct Node<'a, 'c, 's> {
    ctx: &'a mut Ctx<'c, 's>,
    /// A string here is free text (not inspected).
    text: bool,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let ctx = self.ctx;
        if ctx.skipped() {
            return match IgnoredAny::deserialize(d) {
                Ok(_) => Ok(()),
                Err(e) => {
                    ctx.note_cut(true);
                    Err(e)
                }
            };
        }
        // a field that is free text when it is a string (`content:string`):
        // an array or object there is walked as structure
        let text = ctx.free_string();
        let r = d.deserialize_any(Node {
            ctx: &mut *ctx,
            text,
        });
        if r.is_err() {
            ctx.note_cut(text);
        }
        r
    }
}

use serde::Deserialize;

impl<'de> Visitor<'de> for Node<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.text {
            return Ok(());
        }
        let loc = self.ctx.location();
        self.ctx.scan.value(Kind::Value, &loc, v, false);
        if self.ctx.scan.done() {
            return Err(E::custom(STOP));
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.ctx.path.push(PathSeg::Index);
        let r = loop {
            match seq.next_element_seed(Node {
                ctx: &mut *self.ctx,
                text: false,
            }) {
                Ok(Some(())) => {}
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.ctx.path.pop();
        r
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        loop {
            let key = match map.next_key_seed(Key {
                ctx: &mut *self.ctx,
            })? {
                Some(k) => k,
                None => return Ok(()),
            };
            // prototype pollution through nested members:
            // `{"constructor": {"prototype": {…}}}`
            if key == "prototype"
                && matches!(self.ctx.path.last(), Some(PathSeg::Key(k)) if k == "constructor")
                && !self
                    .ctx
                    .scan
                    .hit(Family::Nodejs, "nodejs-prototype-pollution", "json-key")
            {
                return Err(de::Error::custom(STOP));
            }
            self.ctx.path.push(PathSeg::Key(key));
            let r = map.next_value_seed(Node {
                ctx: &mut *self.ctx,
                text: false,
            });
            self.ctx.path.pop();
            r?;
        }
    }
}

/// A map key: checked as a name (unless inside a skipped subtree, which
/// never reaches here), returned for the path.
struct Key<'a, 'c, 's> {
    ctx: &'a mut Ctx<'c, 's>,
}

impl<'de> DeserializeSeed<'de> for Key<'_, '_, '_> {
    type Value = String;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_, '_, '_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        let loc = self.ctx.location();
        let loc = if loc == "json:" {
            "json-key".to_string()
        } else {
            format!("{loc}-key")
        };
        self.ctx.scan.value(Kind::Name, &loc, v, false);
        self.ctx.scan.session_json_member(&loc, v);
        if self.ctx.scan.done() {
            return Err(E::custom(STOP));
        }
        Ok(v.to_string())
    }
}
