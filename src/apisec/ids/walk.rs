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
pub(crate) fn json(
    scan: &mut Scan,
    body: &[u8],
    free: Option<&FieldSet>,
    exclude: Option<&FieldSet>,
) -> Result<bool, IdsError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut path = Vec::new();
    let mut ctx = Ctx {
        scan,
        free,
        exclude,
        path: &mut path,
    };
    let walked = (Node { ctx: &mut ctx }).deserialize(&mut de);
    match walked.and_then(|()| de.end()) {
        Ok(()) => Ok(true),
        Err(e) => {
            if e.to_string().starts_with("recursion limit exceeded") {
                Err(IdsError::TooDeep)
            } else {
                Ok(false)
            }
        }
    }
}

struct Ctx<'c, 's> {
    scan: &'c mut Scan,
    free: Option<&'s FieldSet>,
    exclude: Option<&'s FieldSet>,
    path: &'c mut Vec<PathSeg>,
}

impl Ctx<'_, '_> {
    fn skipped(&self) -> bool {
        self.free.is_some_and(|f| f.covers(self.path))
            || self.exclude.is_some_and(|f| f.covers(self.path))
    }

    fn location(&self) -> String {
        let mut s = String::from("json:");
        for (i, seg) in self.path.iter().enumerate() {
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
}

struct Node<'a, 'c, 's> {
    ctx: &'a mut Ctx<'c, 's>,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.ctx.skipped() {
            IgnoredAny::deserialize(d)?;
            return Ok(());
        }
        d.deserialize_any(self)
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
