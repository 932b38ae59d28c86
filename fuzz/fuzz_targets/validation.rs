//! JSON body parsing (as the handlers do: `UniqueValue`, which refuses a
//! member named twice) and task validation: any body gives a value or a 400,
//! validation never panics, and `validate` succeeds exactly when `errors`
//! is empty.
#![no_main]
use std::sync::OnceLock;

use frenly::app::tasks::TaskRules;
use frenly::config::{load, Source};
use frenly::http::UniqueValue;
use libfuzzer_sys::fuzz_target;

fn rules() -> Option<&'static TaskRules> {
    static RULES: OnceLock<Option<TaskRules>> = OnceLock::new();
    RULES
        .get_or_init(|| load(&Source::default()).ok().map(|c| TaskRules::new(&c)))
        .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Some(rules) = rules() else { return };
    let Ok(UniqueValue(body)) = frenly::http::json::parse::<UniqueValue>(data) else {
        return;
    };
    for schema in [&rules.create, &rules.patch, &rules.result] {
        let errs = schema.errors(&body);
        assert_eq!(errs.is_empty(), schema.validate(&body).is_ok());
        if let Some(obj) = body.as_object() {
            // Every reported field is a body field or a rule's field.
            for k in errs.keys() {
                assert!(obj.contains_key(k) || schema.rules.iter().any(|r| &r.field == k));
            }
        }
    }
});
