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
    /// `null` is refused (a field the object cannot hold empty, where
    /// `null` would otherwise mean "absent": a PATCH `{"title": null}`
    /// answered 200 and changed nothing).
    pub not_null: bool,
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
            not_null: false,
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
    pub fn not_null(mut self) -> Rule {
        self.not_null = true;
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
            Some(Value::Null) if self.not_null => {
                errs.push(format!("{f} cannot be null (leave it out to keep it)"));
                return;
            }
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
        if self.no_control && has_control_or_invisible(s) {
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
                        notes.push(
                            "no control characters nor invisible format characters \
                             (docs/CONFIG.md)"
                                .to_string(),
                        );
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
            } else if !matches!(r.kind, Kind::Any) && !r.not_null {
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
/// the soft hyphen (U+00AD), line and paragraph separators (U+2028,
/// U+2029: one title, two lines in a log), invisible operators and
/// deprecated format controls (U+2060..U+2064, U+206A..U+206F),
/// interlinear annotation (U+FFF9..U+FFFB), the layout controls of
/// Egyptian hieroglyphs, shorthand and musical notation (U+13430..U+1343F,
/// U+1BCA0..U+1BCA3, U+1D173..U+1D17A), and the noncharacters
/// (U+FDD0..U+FDEF, U+xxFFFE, U+xxFFFF: never text by definition). That is
/// every character of general category Cc and Cf except those that are
/// text: the joiners U+200C and U+200D (Persian, Indic scripts, emoji
/// sequences), and the visible prepended marks of Arabic, Syriac and
/// Kaithi (U+0600..U+0605, U+06DD, U+070F, U+0890, U+0891, U+08E2,
/// U+110BD, U+110CD). The tag characters (U+E0000..U+E007F) and the
/// Mongolian vowel separator (U+180E) are Cf too but need their context:
/// see [`has_control_or_invisible`], which this alone refuses them for.
pub fn is_control_or_invisible(c: char) -> bool {
    let n = u32::from(c);
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FDD0}'..='\u{FDEF}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E007F}'
        )
        || n & 0xFFFE == 0xFFFE
}

/// The black flag U+1F3F4, the only base of emoji tag sequences
/// (subdivision flags: England is U+1F3F4, the tags `gbeng`, U+E007F).
const TAG_BASE: char = '\u{1F3F4}';
/// The most tag characters in one sequence: a subdivision code (ISO 3166-2:
/// region and up to 3 more characters) has at most 6.
const TAG_SPEC_MAX: usize = 7;

/// A variation selector: standard (U+FE00..U+FE0F, VS16 makes an emoji),
/// ideographic (U+E0100..U+E01EF) or Mongolian free ones (U+180B..U+180D,
/// U+180F). One selects the form of the character before it; a run of
/// them selects nothing and is how bytes are hidden after a visible
/// character ("emoji smuggling").
fn is_variation_selector(c: char) -> bool {
    matches!(
        c,
        '\u{180B}'..='\u{180D}' | '\u{180F}' | '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}'
    )
}

/// Does `s` hold a character that [`is_control_or_invisible`] refuses,
/// outside the contexts where it is text?
///
/// * Tag characters only in an emoji tag sequence: U+1F3F4, 1 to 7 of
///   U+E0030..U+E0039 / U+E0061..U+E007A, then U+E007F (the flags of
///   England, Scotland, Wales). Anywhere else they are invisible ASCII
///   (U+E0020..U+E007E mirror it) that a language model reads and a person
///   does not: hidden instructions in a task title ("ASCII smuggling").
/// * U+180E (Mongolian vowel separator) only between a Mongolian letter
///   and a final A or E (U+1820, U+1821), where Mongolian spelling needs it.
/// * A variation selector only right after a character that is not one.
pub fn has_control_or_invisible(s: &str) -> bool {
    let mut prev: Option<char> = None;
    // Some(n): inside a tag sequence, n tag characters so far
    let mut tags: Option<usize> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(n) = tags {
            match c {
                '\u{E0030}'..='\u{E0039}' | '\u{E0061}'..='\u{E007A}' if n < TAG_SPEC_MAX => {
                    tags = Some(n + 1);
                    continue;
                }
                '\u{E007F}' if n > 0 => {
                    tags = None;
                    prev = Some(c);
                    continue;
                }
                // an unterminated tag sequence hides what it holds
                _ if n > 0 => return true,
                // the black flag alone: an ordinary emoji
                _ => tags = None,
            }
        }
        let refused = match c {
            TAG_BASE => {
                tags = Some(0);
                false
            }
            '\u{180E}' => {
                let after_letter = prev.is_some_and(|p| ('\u{1820}'..='\u{18AA}').contains(&p));
                let before_a_or_e = matches!(chars.peek(), Some('\u{1820}' | '\u{1821}'));
                !(after_letter && before_a_or_e)
            }
            c if is_variation_selector(c) => prev.is_none_or(is_variation_selector),
            c => is_control_or_invisible(c),
        };
        if refused {
            return true;
        }
        prev = Some(c);
    }
    // a tag sequence cut off at the end of the text
    tags.is_some_and(|n| n > 0)
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

    /// Probe K #5: tag characters, U+180E and noncharacters passed the
    /// title rule. Every Cc/Cf character that is not text is refused, and
    /// what is text in its context still passes: joiners in emoji and
    /// Persian, a subdivision flag, a keycap, an ideographic variation,
    /// Mongolian spelling, Arabic number signs, private-use icons.
    #[test]
    fn invisible_characters_are_refused_where_they_are_not_text() {
        for bad in [
            "a\u{E0001}b",
            "a\u{E0041}\u{E0042}b",
            "\u{1F3F4}\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}",
            "\u{1F3F4}\u{E007F}",
            "\u{1F3F4}\u{E0061}\u{E0061}\u{E0061}\u{E0061}\u{E0061}\u{E0061}\u{E0061}\u{E0061}\u{E007F}",
            "\u{E007F}",
            "a\u{180E}b",
            "\u{180E}\u{1820}",
            "\u{FFFF}",
            "\u{FFFE}",
            "\u{FDD0}",
            "\u{1FFFF}",
            "\u{10FFFE}",
            "soft\u{AD}hyphen",
            "\u{13430}",
            "\u{1BCA0}",
            "\u{1D173}",
            "x\u{FE0F}\u{FE0F}",
            "\u{FE0F}x",
            "\u{1F600}\u{E0100}\u{E0101}\u{E0102}",
            "a\u{7}",
            "\u{202E}",
            "\u{200B}",
        ] {
            assert!(has_control_or_invisible(bad), "{bad:?} passed");
        }
        for good in [
            "plain title",
            "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
            "\u{0645}\u{06CC}\u{200C}\u{062E}\u{0648}\u{0627}\u{0647}\u{0645}",
            "\u{1F3F4}\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F} England",
            "\u{1F3F4}",
            "\u{1F3F4}x",
            "1\u{FE0F}\u{20E3}",
            "\u{2764}\u{FE0F}",
            "\u{845B}\u{E0100}",
            "\u{182D}\u{1820}\u{182D}\u{180E}\u{1820}",
            "\u{0600}\u{0661}\u{0662}",
            "\u{F8FF}",
            "\u{3042}\u{0301}",
        ] {
            assert!(!has_control_or_invisible(good), "{good:?} refused");
        }
    }

    /// Probe K #4: a field that cannot be empty refuses `null` (it meant
    /// "absent" and was silently ignored); others keep null as absent.
    #[test]
    fn null_is_refused_where_marked() {
        let s = Schema::new(vec![
            Rule::new("t", Kind::String).not_null(),
            Rule::new("d", Kind::String),
        ]);
        let e = s.errors(&json!({"t": null, "d": null}));
        assert_eq!(e.keys().collect::<Vec<_>>(), vec!["t"], "{e:?}");
        assert!(s.errors(&json!({})).is_empty());
        let js = s.json_schema();
        assert_eq!(js["properties"]["t"]["type"], "string", "{js}");
        assert!(js["properties"]["d"]["anyOf"].is_array(), "{js}");
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
