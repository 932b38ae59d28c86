//! Input validation in the guide's terms: per field `required`, `type`,
//! `min_length`, `max_length`, `pattern`, plus Frenly's `no control
//! characters` and `one of` rules.
//!
//! Threat: malformed, oversized or unexpected input reaching storage and
//! other clients (mass assignment through unknown fields, control characters
//! in titles shown in terminals, megabyte "titles"). Guarantee: a body is
//! validated as a `serde_json::Value` (so a wrong type is reported per field,
//! not as a parse error), unknown fields are rejected, and every broken rule
//! of every field is reported at once in the error's `fields`
//! (400 `validation_failed`). Lengths count Unicode scalar values.
//! Configured patterns follow the guide's `re.match` semantics: anchored at
//! the start of the value (add `$` to anchor the end).
//!
//! Not covered: the body's size and nesting depth (the body limit and
//! `http::json` refuse those before a handler runs).

use regex::Regex;
use serde_json::{Map, Value};

use crate::config::FieldRuleConfig;
use crate::http::{ApiError, FieldErrors};

/// The JSON type a field must have.
#[derive(Debug, Clone)]
pub enum Kind {
    String,
    Bool,
    /// An integer in `min..=max`.
    Integer {
        min: i64,
        max: i64,
    },
    /// A JSON object.
    Object,
    /// A string that is one of these values.
    OneOf(&'static [&'static str]),
    /// Any JSON value.
    Any,
}

/// The rules of one field.
#[derive(Debug, Clone)]
pub struct Rule {
    pub field: String,
    pub required: bool,
    pub kind: Kind,
    pub min_length: Option<usize>,
    pub max_length: Option<usize>,
    pub patterns: Vec<Regex>,
    pub no_control: bool,
}

impl Rule {
    pub fn new(field: &str, kind: Kind) -> Rule {
        Rule {
            field: field.to_string(),
            required: false,
            kind,
            min_length: None,
            max_length: None,
            patterns: Vec::new(),
            no_control: false,
        }
    }
    pub fn required(mut self) -> Rule {
        self.required = true;
        self
    }
    pub fn length(mut self, min: Option<usize>, max: Option<usize>) -> Rule {
        self.min_length = min;
        self.max_length = max;
        self
    }
    pub fn no_control(mut self) -> Rule {
        self.no_control = true;
        self
    }

    /// Add configured rules. They can only make a field stricter: a required
    /// field stays required and the default length bounds stay in force.
    pub fn with_config(mut self, c: &FieldRuleConfig, allow_required: bool) -> Rule {
        if allow_required && c.required == Some(true) {
            self.required = true;
        }
        if let Some(min) = c.min_length {
            self.min_length = Some(self.min_length.map_or(min, |m| m.max(min)));
        }
        if let Some(max) = c.max_length {
            self.max_length = Some(self.max_length.map_or(max, |m| m.min(max)));
        }
        if let Some(p) = &c.pattern {
            // The config loader already rejected invalid patterns.
            match Regex::new(&format!("^(?:{p})")) {
                Ok(re) => self.patterns.push(re),
                Err(e) => {
                    tracing::warn!(field = %self.field, error = %e, "ignoring invalid pattern")
                }
            }
        }
        self
    }

    fn check(&self, value: Option<&Value>, errs: &mut Vec<String>) {
        let f = &self.field;
        let value = match value {
            None | Some(Value::Null) => {
                if self.required {
                    errs.push(format!("{f} is required"));
                }
                return;
            }
            Some(v) => v,
        };
        match (&self.kind, value) {
            (Kind::Any, _) => {}
            (Kind::Object, Value::Object(_)) => {}
            (Kind::Object, _) => errs.push(format!("{f} must be a JSON object")),
            (Kind::Bool, Value::Bool(_)) => {}
            (Kind::Bool, _) => errs.push(format!("{f} must be true or false")),
            (Kind::Integer { min, max }, v) => match v.as_i64() {
                Some(n) if (*min..=*max).contains(&n) => {}
                _ => errs.push(format!("{f} must be an integer from {min} to {max}")),
            },
            (Kind::OneOf(allowed), Value::String(s)) if allowed.contains(&s.as_str()) => {}
            (Kind::OneOf(allowed), _) => {
                errs.push(format!("{f} must be one of {}", allowed.join(", ")))
            }
            (Kind::String, Value::String(s)) => self.check_str(s, errs),
            (Kind::String, _) => errs.push(format!("{f} must be a string")),
        }
    }

    fn check_str(&self, s: &str, errs: &mut Vec<String>) {
        let f = &self.field;
        let len = s.chars().count();
        if let Some(min) = self.min_length {
            if len < min {
                errs.push(format!("{f} must be at least {min} characters"));
            }
        }
        if let Some(max) = self.max_length {
            if len > max {
                errs.push(format!("{f} must be at most {max} characters"));
            }
        }
        if self.no_control && s.chars().any(is_control_or_invisible) {
            errs.push(format!("{f} must not contain control characters"));
        }
        if self.patterns.iter().any(|re| !re.is_match(s)) {
            errs.push(format!("{f} has an invalid format"));
        }
    }
}

/// The rules of a body: its fields, and nothing else.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub rules: Vec<Rule>,
}

impl Schema {
    pub fn new(rules: Vec<Rule>) -> Schema {
        Schema { rules }
    }

    /// Every broken rule of `body`, by field (empty when valid).
    pub fn errors(&self, body: &Value) -> FieldErrors {
        let mut out = FieldErrors::new();
        let Some(obj) = body.as_object() else {
            out.insert("body".into(), vec!["the body must be a JSON object".into()]);
            return out;
        };
        for key in obj.keys() {
            if !self.rules.iter().any(|r| &r.field == key) {
                out.insert(
                    key.clone(),
                    vec![format!("unknown field `{}`", shorten(key))],
                );
            }
        }
        for rule in &self.rules {
            let mut errs = Vec::new();
            rule.check(obj.get(&rule.field), &mut errs);
            if !errs.is_empty() {
                out.insert(rule.field.clone(), errs);
            }
        }
        out
    }

    /// The JSON Schema these rules enforce (for the OpenAPI description):
    /// an object with exactly these properties (`additionalProperties:
    /// false`), each with its type, bounds and enumeration. Configured
    /// patterns and the control-character rule are stated in the
    /// description (regex dialects differ).
    pub fn json_schema(&self) -> Value {
        let mut props = Map::new();
        let mut required = Vec::new();
        for r in &self.rules {
            let mut p = Map::new();
            match &r.kind {
                Kind::String => {
                    p.insert("type".into(), "string".into());
                    if let Some(min) = r.min_length {
                        p.insert("minLength".into(), min.into());
                    }
                    if let Some(max) = r.max_length {
                        p.insert("maxLength".into(), max.into());
                    }
                    let mut notes = Vec::new();
                    if r.no_control {
                        notes.push("no control characters".to_string());
                        p.insert(
                            "pattern".into(),
                            "^[^\\u0000-\\u001f\\u007f-\\u009f]*$".into(),
                        );
                    }
                    for re in &r.patterns {
                        notes.push(format!("matches `{}`", re.as_str()));
                    }
                    if !notes.is_empty() {
                        p.insert("description".into(), notes.join("; ").into());
                    }
                }
                Kind::Bool => {
                    p.insert("type".into(), "boolean".into());
                }
                Kind::Integer { min, max } => {
                    p.insert("type".into(), "integer".into());
                    p.insert("minimum".into(), (*min).into());
                    p.insert("maximum".into(), (*max).into());
                }
                Kind::Object => {
                    p.insert("type".into(), "object".into());
                }
                Kind::OneOf(values) => {
                    p.insert("type".into(), "string".into());
                    p.insert("enum".into(), (*values).into());
                }
                Kind::Any => {}
            }
            if r.required {
                required.push(Value::from(r.field.as_str()));
            } else if !matches!(r.kind, Kind::Any) {
                // An absent and a null optional field mean the same.
                let inner = Value::Object(std::mem::take(&mut p));
                p.insert(
                    "anyOf".into(),
                    vec![inner, serde_json::json!({"type": "null"})].into(),
                );
            }
            props.insert(r.field.clone(), Value::Object(p));
        }
        serde_json::json!({
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": false,
        })
    }

    /// Validate `body`; on success the object's fields.
    pub fn validate<'a>(&self, body: &'a Value) -> Result<&'a Map<String, Value>, ApiError> {
        let errs = self.errors(body);
        match body.as_object() {
            Some(obj) if errs.is_empty() => Ok(obj),
            _ => Err(ApiError::Validation(errs)),
        }
    }
}

/// Unknown field names are echoed back; keep them short.
fn shorten(s: &str) -> String {
    if s.chars().count() > 64 {
        let mut t: String = s.chars().take(64).collect();
        t.push('…');
        t
    } else {
        s.to_string()
    }
}

/// A control character, or an invisible one that changes how the text
/// around it reads: bidirectional overrides and isolates (U+202A..U+202E,
/// U+2066..U+2069: "Trojan Source" titles that display reversed), marks
/// (U+200E, U+200F, U+061C), zero-width space and BOM (U+200B, U+FEFF),
/// line and paragraph separators (U+2028, U+2029: one title, two lines in
/// a log), invisible operators and deprecated format controls (U+2060..
/// U+2064, U+206A..U+206F) and interlinear annotation (U+FFF9..U+FFFB).
/// The joiners U+200C and U+200D are text (Persian, Indic scripts, emoji
/// sequences) and pass.
pub fn is_control_or_invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::new(vec![
            Rule::new("title", Kind::String)
                .required()
                .length(Some(1), Some(5))
                .no_control(),
            Rule::new("p", Kind::OneOf(&["a", "b"])),
            Rule::new("o", Kind::Object),
            Rule::new("n", Kind::Integer { min: 1, max: 3 }),
            Rule::new("b", Kind::Bool),
        ])
    }

    #[test]
    fn every_rule_reported_at_once() {
        let e = schema()
            .errors(&json!({"title": "ab\u{7}cdef", "p": "c", "o": [], "n": 9, "b": 1, "x": 1}));
        assert_eq!(e["title"].len(), 2, "{e:?}");
        for k in ["p", "o", "n", "b", "x"] {
            assert!(e.contains_key(k), "{k}: {e:?}");
        }
        let e = schema().errors(&json!({}));
        assert_eq!(e["title"], vec!["title is required"]);
        let e = schema().errors(&json!({"title": 5}));
        assert_eq!(e["title"], vec!["title must be a string"]);
        assert!(schema()
            .errors(&json!({"title": "ok", "p": "a", "o": {}, "n": 2, "b": true}))
            .is_empty());
        assert!(schema().errors(&json!([])).contains_key("body"));
    }

    #[test]
    fn config_only_tightens_and_patterns_anchor() {
        let c = FieldRuleConfig {
            required: Some(false),
            min_length: Some(0),
            max_length: Some(100),
            pattern: Some("[a-z]+$".into()),
        };
        let r = Rule::new("t", Kind::String)
            .required()
            .length(Some(1), Some(5))
            .with_config(&c, true);
        assert!(r.required);
        assert_eq!((r.min_length, r.max_length), (Some(1), Some(5)));
        let s = Schema::new(vec![r]);
        assert!(s.errors(&json!({"t": "abc"})).is_empty());
        assert!(!s.errors(&json!({"t": "1abc"})).is_empty());
        assert!(!s.errors(&json!({"t": "abc1"})).is_empty());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        /// A task field: absent, valid, or broken in one of several ways.
        fn title() -> impl Strategy<Value = (Option<Value>, bool)> {
            prop_oneof![
                "[a-zA-Z0-9 ]{1,200}".prop_map(|s| (Some(json!(s)), false)),
                Just((None, true)),
                Just((Some(json!("")), true)),
                Just((Some(Value::Null), true)),
                "[a-z]{201,260}".prop_map(|s| (Some(json!(s)), true)),
                "[a-z]{0,5}[\u{0}-\u{1f}\u{7f}][a-z]{0,5}".prop_map(|s| (Some(json!(s)), true)),
                any::<i64>().prop_map(|n| (Some(json!(n)), true)),
                Just((Some(json!(["t"])), true)),
            ]
        }
        fn description() -> impl Strategy<Value = (Option<Value>, bool)> {
            prop_oneof![
                Just((None, false)),
                Just((Some(Value::Null), false)),
                ".{0,50}".prop_map(|s| (Some(json!(s)), false)),
                Just((Some(json!("x".repeat(100_001))), true)),
                any::<bool>().prop_map(|b| (Some(json!(b)), true)),
                Just((Some(json!({"a": 1})), true)),
            ]
        }
        fn priority() -> impl Strategy<Value = (Option<Value>, bool)> {
            prop_oneof![
                Just((None, false)),
                prop::sample::select(vec!["low", "normal", "high"])
                    .prop_map(|s| (Some(json!(s)), false)),
                "[A-Z]{1,6}".prop_map(|s| (Some(json!(s)), true)),
                any::<i32>().prop_map(|n| (Some(json!(n)), true)),
            ]
        }
        fn input() -> impl Strategy<Value = (Option<Value>, bool)> {
            prop_oneof![
                Just((None, false)),
                Just((Some(json!({"k": [1, "two", null]})), false)),
                Just((Some(json!({})), false)),
                Just((Some(json!([1, 2])), true)),
                ".{0,10}".prop_map(|s| (Some(json!(s)), true)),
                any::<i32>().prop_map(|n| (Some(json!(n)), true)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// For task bodies with a random subset of broken rules (and
            /// random unknown fields), `fields` names exactly the broken ones.
            #[test]
            fn reports_exactly_the_broken_fields(
                t in title(), d in description(), p in priority(), i in input(),
                unknown in proptest::collection::btree_set("[a-z_]{1,12}", 0..3),
            ) {
                let cfg = crate::config::load(&crate::config::Source::default()).unwrap();
                let rules = crate::app::tasks::TaskRules::new(&cfg);
                let mut body = Map::new();
                let mut broken = BTreeSet::new();
                for (name, (v, bad)) in [("title", t), ("description", d), ("priority", p), ("input", i)] {
                    if let Some(v) = v { body.insert(name.into(), v); }
                    if bad { broken.insert(name.to_string()); }
                }
                for u in unknown {
                    if ["title", "description", "priority", "input"].contains(&u.as_str()) { continue; }
                    body.insert(u.clone(), json!(1));
                    broken.insert(u);
                }
                let body = Value::Object(body);
                let errs = rules.create.errors(&body);
                let got: BTreeSet<String> = errs.keys().cloned().collect();
                prop_assert_eq!(&got, &broken, "{:?}", errs);
                prop_assert!(errs.values().all(|v| !v.is_empty()));
                prop_assert_eq!(rules.create.validate(&body).is_ok(), broken.is_empty());
            }

            /// Validation never panics, whatever the JSON.
            #[test]
            fn never_panics(v in arb_json()) {
                let cfg = crate::config::load(&crate::config::Source::default()).unwrap();
                let rules = crate::app::tasks::TaskRules::new(&cfg);
                for s in [&rules.create, &rules.patch, &rules.result] {
                    let errs = s.errors(&v);
                    prop_assert_eq!(errs.is_empty(), s.validate(&v).is_ok());
                }
            }
        }

        fn arb_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(|f| json!(f)),
                ".{0,20}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    proptest::collection::btree_map(
                        prop_oneof![
                            prop::sample::select(vec![
                                "title",
                                "description",
                                "priority",
                                "input",
                                "status",
                                "result"
                            ])
                            .prop_map(String::from),
                            ".{0,8}",
                        ],
                        inner,
                        0..6
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }
    }
}
