//! SQL injection: a small SQL lexer and the shapes injections take.
//!
//! A value is lexed three times, as libinjection does: as it stands, and as
//! if it continued a `'`- or `"`-quoted literal (the usual injection point:
//! `name='<value>'`). Each run yields a fingerprint, one character per token:
//!
//! | char | token |
//! |---|---|
//! | `s` | string literal (in a quote context the first `s` is the literal the value breaks out of) |
//! | `n` | number, `null`, `true`, `false` |
//! | `b` | bare word (identifier) |
//! | `f` | SQL function: a known function name directly followed by `(` |
//! | `v` | variable `@x`, `@@x` |
//! | `&` | logical operator `and or xor && \|\|` |
//! | `=` | comparison `= == <> != < > <= >= <=>` |
//! | `w` | word operator `like rlike regexp glob sounds is in between div mod` |
//! | `o` | other operator `+ - * / % ^ \| & ~ ! ::` |
//! | `U` | `union` |
//! | `S` | `select` |
//! | `E` | other statement keyword `insert update delete drop create alter exec ...` |
//! | `k` | clause keyword `from where having group order by limit into ...` |
//! | `(` `)` `,` `;` | themselves |
//! | `c` | comment (`--`, `#`, `/* */`) |
//!
//! Injection shapes are then small regular expressions over the
//! fingerprint (for example `^s\)*&` = "closes the literal and adds a
//! boolean clause": `' or 1=1`, `') and sleep(5)`), plus regular expressions
//! for keyword grammar that only SQL has (`waitfor delay`, `into outfile`,
//! `information_schema`). English text does not produce these shapes: a word
//! like `select` or `union` alone is a bare keyword with no operator, quote
//! break or function call around it.

use std::sync::LazyLock;

use regex::{Regex, RegexSet};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    None,
    Quote(u8),
}

/// SQL-specific function names: flagged with or without blanks/comments
/// before `(`.
const SQL_FUNCS: &[&str] = &[
    "ascii",
    "benchmark",
    "bit_length",
    "char_length",
    "character_length",
    "coalesce",
    "compress",
    "uncompress",
    "concat",
    "concat_ws",
    "group_concat",
    "connection_id",
    "crc32",
    "current_database",
    "current_schema",
    "current_user",
    "session_user",
    "system_user",
    "curdate",
    "curtime",
    "date_add",
    "date_format",
    "date_sub",
    "datediff",
    "db_id",
    "db_name",
    "dbms_pipe",
    "export_set",
    "extractvalue",
    "find_in_set",
    "found_rows",
    "from_base64",
    "to_base64",
    "geometrycollection",
    "get_lock",
    "release_lock",
    "gtid_subset",
    "has_dbaccess",
    "ifnull",
    "isnull",
    "nullif",
    "nvl",
    "iif",
    "inet_aton",
    "inet_ntoa",
    "instr",
    "is_srvrolemember",
    "json_array",
    "json_build_object",
    "json_extract",
    "json_keys",
    "json_object",
    "json_valid",
    "last_insert_id",
    "lcase",
    "ucase",
    "linestring",
    "load_file",
    "lo_export",
    "lo_get",
    "lo_import",
    "lo_from_bytea",
    "lpad",
    "rpad",
    "ltrim",
    "rtrim",
    "make_set",
    "master_pos_wait",
    "md5",
    "sha1",
    "sha2",
    "multipoint",
    "multipolygon",
    "name_const",
    "octet_length",
    "openquery",
    "openrowset",
    "pg_ls_dir",
    "pg_read_file",
    "pg_sleep",
    "randomblob",
    "regexp_substr",
    "row_count",
    "sec_to_time",
    "time_to_sec",
    "soundex",
    "sqlite_compileoption_get",
    "sqlite_compileoption_used",
    "sqlite_version",
    "starts_with",
    "str_to_date",
    "strcmp",
    "subdate",
    "substr",
    "substring",
    "substring_index",
    "sys_context",
    "sysdate",
    "to_char",
    "to_number",
    "unhex",
    "unistr",
    "updatexml",
    "user_name",
    "utl_inaddr",
    "xmltype",
    "string_agg",
    "array_agg",
    "xp_cmdshell",
    "xp_dirtree",
    "current_setting",
    "query_to_xml",
    "json_agg",
    "dblink",
    "sqrt",
    "log10",
    "log2",
    "conv",
    "elt",
];

/// Function names that are also ordinary words: only flagged when `(`
/// follows directly, and not as a plural marker `word(s)`.
const WORD_FUNCS: &[&str] = &[
    "if",
    "left",
    "right",
    "mid",
    "user",
    "date",
    "default",
    "replace",
    "position",
    "insert",
    "values",
    "schema_name",
    "div",
    "mod",
    "convert",
    "year",
    "month",
    "day",
    "any",
    "all",
    "some",
    "procedure",
    "analyse",
    "ilike",
    "glob",
    "json",
    "likely",
    "unlikely",
    "abs",
    "sin",
    "cos",
    "tan",
    "pow",
    "power",
    "ord",
    "hex",
    "bin",
    "oct",
    "chr",
    "char",
    "floor",
    "ceil",
    "ceiling",
    "round",
    "rand",
    "sleep",
    "database",
    "schema",
    "version",
    "lower",
    "upper",
    "degrees",
    "radians",
    "field",
    "format",
    "length",
    "quote",
    "repeat",
    "reverse",
    "space",
    "sign",
    "trim",
    "exists",
    "count",
    "least",
    "greatest",
    "encode",
    "decode",
    "collation",
    "now",
    "cast",
    "exp",
    "ln",
    "locate",
    "uuid",
    "waitfor",
    "overlay",
    "pi",
    "log",
];

/// Word functions whose bare `name()` call is itself a probe.
const NOARG_FUNCS: &[&str] = &["database", "user", "version", "schema", "now", "pi", "uuid"];

fn keyword(w: &str) -> Option<u8> {
    Some(match w {
        "union" => b'U',
        "select" => b'S',
        "insert" | "update" | "delete" | "drop" | "create" | "alter" | "exec" | "execute"
        | "declare" | "truncate" | "shutdown" | "grant" | "revoke" | "merge" | "handler"
        | "rename" => b'E',
        "from" | "where" | "having" | "group" | "order" | "by" | "limit" | "offset" | "into"
        | "values" | "table" | "join" | "case" | "when" | "then" | "else" | "end" | "top"
        | "distinct" | "all" | "procedure" | "outfile" | "dumpfile" | "delay" | "collate"
        | "escape" | "returns" | "return" | "as" | "set" | "except" | "intersect" | "nocase" => {
            b'k'
        }
        "and" | "or" | "xor" => b'&',
        "not" => b'!',
        "like" | "rlike" | "regexp" | "glob" | "sounds" | "is" | "in" | "between" | "div"
        | "mod" | "ilike" | "similar" => b'w',
        "null" | "true" | "false" => b'n',
        _ => return None,
    })
}

/// Lex `s` in context `ctx` into a fingerprint (at most `MAX_TOKENS`).
fn fingerprint(s: &[u8], ctx: Ctx) -> Vec<u8> {
    const MAX_TOKENS: usize = 48;
    let mut fp = Vec::with_capacity(16);
    let mut i = 0;
    if let Ctx::Quote(q) = ctx {
        match s.iter().position(|&c| c == q) {
            Some(p) => {
                fp.push(b's');
                i = p + 1;
            }
            None => return fp,
        }
    }
    while let Some(&c) = s.get(i).filter(|_| fp.len() < MAX_TOKENS) {
        match c {
            b' ' | b'\n' | b'\t' | b'\r' | 0x0b | 0x0c | 0xa0 => i += 1,
            b'\'' | b'"' => {
                let mut j = i + 1;
                loop {
                    match s.get(j) {
                        None => break,
                        Some(&d) if d == c => {
                            if s.get(j + 1) == Some(&c) {
                                j += 2;
                                continue;
                            }
                            j += 1;
                            break;
                        }
                        Some(b'\\') => j += 2,
                        Some(_) => j += 1,
                    }
                }
                fp.push(b's');
                i = j.min(s.len());
            }
            b'`' => {
                let j = tail(s, i + 1)
                    .iter()
                    .position(|&d| d == b'`')
                    .map_or(s.len(), |p| i + 2 + p);
                fp.push(b'b');
                i = j;
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                // MySQL executable comment /*!50000 ... */: the content is code.
                if s.get(i + 2) == Some(&b'!') {
                    i += 3;
                    while s.get(i).is_some_and(u8::is_ascii_digit) {
                        i += 1;
                    }
                    continue;
                }
                match find(tail(s, i + 2), b"*/") {
                    Some(p) => {
                        i += 2 + p + 2;
                        // an inline comment is a blank, not a token
                    }
                    None => {
                        fp.push(b'c');
                        i = s.len();
                    }
                }
            }
            b'*' if s.get(i + 1) == Some(&b'/') => i += 2,
            b'-' if s.get(i + 1) == Some(&b'-') => {
                // a line comment with more SQL after its newline is a blank
                // (`1--\nAND--\n1=1`: MySQL reads on)
                if let Some(next) = after_line_comment(s, i) {
                    i = next;
                    continue;
                }
                // `x -- y` (blanks on both sides) is also an English dash
                let spaced =
                    before(s, i) == Some(b' ') && matches!(s.get(i + 2), Some(b' ') | None);
                fp.push(if spaced { b'C' } else { b'c' });
                i = s.len();
            }
            b'#' => {
                if let Some(next) = after_line_comment(s, i) {
                    i = next;
                    continue;
                }
                fp.push(b'c');
                i = s.len();
            }
            b'(' | b')' | b',' | b';' => {
                fp.push(c);
                i += 1;
            }
            b'@' => {
                let mut j = i + 1;
                while s.get(j).is_some_and(|&d| d == b'@' || is_word(d)) {
                    j += 1;
                }
                fp.push(if j > i + 1 { b'v' } else { b'o' });
                i = j;
            }
            b'0'..=b'9' | b'.' if c != b'.' || s.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let mut j = i;
                if c == b'0' && matches!(s.get(i + 1), Some(b'x' | b'b')) {
                    j += 2;
                    while s.get(j).is_some_and(u8::is_ascii_hexdigit) {
                        j += 1;
                    }
                } else {
                    while s.get(j).is_some_and(|&d| d.is_ascii_digit() || d == b'.') {
                        j += 1;
                    }
                    if matches!(s.get(j), Some(b'e'))
                        && s.get(j + 1)
                            .is_some_and(|d| d.is_ascii_digit() || *d == b'-' || *d == b'+')
                    {
                        j += 2;
                        while s.get(j).is_some_and(u8::is_ascii_digit) {
                            j += 1;
                        }
                    }
                }
                // `1abc` is a word, not a number followed by a word
                if s.get(j).is_some_and(|&d| is_word(d) && d != b'e') {
                    while s.get(j).is_some_and(|&d| is_word(d)) {
                        j += 1;
                    }
                    fp.push(b'b');
                } else {
                    fp.push(b'n');
                }
                i = j;
            }
            c if is_word_start(c) => {
                let mut j = i;
                while s.get(j).is_some_and(|&d| is_word(d) || d == b'.') {
                    j += 1;
                }
                let w = std::str::from_utf8(s.get(i..j).unwrap_or_default()).unwrap_or("");
                let w = w.trim_end_matches('.');
                let tight = s.get(j) == Some(&b'(');
                let paren = tight || next_is_paren(tail(s, j));
                let last = w.rsplit('.').next().unwrap_or(w);
                let sql_call = paren && SQL_FUNCS.contains(&last);
                let word_call = tight
                    && WORD_FUNCS.contains(&last)
                    && !plural(tail(s, j))
                    && (!tail(s, j).starts_with(b"()") || NOARG_FUNCS.contains(&last));
                let t = if sql_call || word_call {
                    b'f'
                } else {
                    keyword(w).unwrap_or(b'b')
                };
                fp.push(t);
                i = j;
            }
            b'=' | b'<' | b'>' | b'!' => {
                let mut j = i + 1;
                while j - i < 3 && matches!(s.get(j), Some(b'=' | b'<' | b'>')) {
                    j += 1;
                }
                let op = s.get(i..j).unwrap_or_default();
                fp.push(if op == b"!" {
                    b'!'
                } else if op == b"<>" || op.contains(&b'=') || op == b"<" || op == b">" {
                    b'='
                } else {
                    b'o'
                });
                i = j;
            }
            b'|' | b'&' => {
                if s.get(i + 1) == Some(&c) {
                    fp.push(b'&');
                    i += 2;
                } else {
                    fp.push(b'o');
                    i += 1;
                }
            }
            b':' if s.get(i + 1) == Some(&b':') => {
                fp.push(b'o');
                i += 2;
            }
            b'?' if before(s, i) == Some(b' ')
                && matches!(s.get(i + 1), Some(b' ' | b'|' | b'&')) =>
            {
                fp.push(b'o');
                i += 1;
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'~' => {
                fp.push(b'o');
                i += 1;
            }
            _ => i += 1,
        }
    }
    fp
}

/// `s` from byte `i` on (empty past the end).
/// Where lexing resumes after the line comment at `i` (`--…` or `#…`)
/// when a newline ends it and more than blanks follow; `None` when the
/// comment ends the value.
fn after_line_comment(s: &[u8], i: usize) -> Option<usize> {
    let nl = i + tail(s, i).iter().position(|&d| d == b'\n')? + 1;
    tail(s, nl)
        .iter()
        .any(|d| !d.is_ascii_whitespace())
        .then_some(nl)
}

fn tail(s: &[u8], i: usize) -> &[u8] {
    s.get(i..).unwrap_or_default()
}

/// The byte before `i`, if any.
fn before(s: &[u8], i: usize) -> Option<u8> {
    i.checked_sub(1).and_then(|k| s.get(k)).copied()
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c >= 0x80
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Blanks or comments, then `(`.
fn next_is_paren(s: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => i += 1,
            b'/' if s.get(i + 1) == Some(&b'*') => match find(tail(s, i + 2), b"*/") {
                Some(p) => i += 2 + p + 2,
                None => return false,
            },
            b'(' => return true,
            _ => return false,
        }
    }
    false
}

/// `(s)` / `(es)` right after a word: English plural, not a call.
fn plural(s: &[u8]) -> bool {
    s.starts_with(b"(s)") || s.starts_with(b"(es)")
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Shapes over the fingerprint of a value lexed in a quote context
/// (the value closes a literal first).
static QUOTE_SHAPES: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    compile(&[
        ("sqli-quote-bool", r"^s\)*!?&[\(!]*[snbfvw(cC]"),
        ("sqli-quote-terminate", r"^s\)*(;|c)"),
        (
            "sqli-quote-keyword",
            r"^s\)*(U($|[kS(ocC])|[SE][^&b]|k[^&bo]|kk)",
        ),
        ("sqli-quote-compare", r"^s\)*(=|o)[\(!]*[snbfvk(cC]"),
        ("sqli-quote-word-op", r"^s\)*!?w(!|[(]*n)|^s\)*!?w.*c$"),
        ("sqli-quote-list", r"^s\)*,[(]*[nsf]"),
        ("sqli-quote-concat", r"^s\)*o[snbfv(]"),
    ])
});

/// Shapes over the fingerprint of the value as it stands.
static PLAIN_SHAPES: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    compile(&[
        ("sqli-union-select", r"U[k(]*S"),
        ("sqli-function", r"f"),
        (
            "sqli-select-expr",
            r"S([nvs*f]|o[kn]|b,|bk?[ns=(])|S[(]+[kSEsvf]",
        ),
        ("sqli-bool-compare", r"^[(]*!?&[\(!]*([nsvf]\)*[=w]|b\)*=)"),
        (
            "sqli-bool-compare",
            r"[=(,][(]*!?&[(!]*([nsvf][)]*[=w]|b[)]*=)",
        ),
        ("sqli-string-compare", r"s[=w]s"),
        (
            "sqli-bool-compare",
            r"[ns)][)]*&[(!]*[nsvf][)]*(o[(]*[nsvf][)]*)*!?[=w]",
        ),
        ("sqli-stacked", r";[(]*[SE][(]*[^&!,;b]|;S$"),
        ("sqli-leading-bool", r"^[(]*&[(!]*[nsv][)]*($|[=wobs]|[cC])"),
        ("sqli-compare-comment", r"[=w][(]*[ns][)]*[cC]$"),
        ("sqli-tautology", r"^[ns]=[ns]([cC]|;|&)"),
        (
            "sqli-closing-paren",
            r"^[ns]?\)+[&;]?[(]*(U|S|E|&[(]*[nsbf])",
        ),
    ])
});

fn compile(list: &[(&'static str, &'static str)]) -> Vec<(&'static str, Regex)> {
    list.iter()
        .filter_map(|(id, re)| Regex::new(re).ok().map(|r| (*id, r)))
        .collect()
}

/// SQL keyword grammar, matched on the folded value with inline comments
/// replaced by a blank.
static GRAMMAR: LazyLock<(RegexSet, Vec<&'static str>)> = LazyLock::new(|| {
    let rules: &[(&str, &str)] = &[
        (
            "sqli-union-select",
            r"\bunion(\s+(all|distinct))?\s*[(\s]\s*select\b",
        ),
        (
            "sqli-insert",
            r"\binsert\s+into\s+[\w`.]+\s*(\([^)]*\)\s*)?(values|select)\b",
        ),
        ("sqli-delete", r"\bdelete\s+from\s+[\w`.]+\s+where\b"),
        ("sqli-update", r"\bupdate\s+[\w`.]+\s+set\s+[\w`.]+\s*="),
        (
            "sqli-ddl",
            r"(^|[;'\x22`)]|\*/)\s*(drop|truncate|alter)\s+(table|database|schema|view|procedure|function|user|trigger|index)\s+(if\s+exists\s+)?[\w`.\x22\[\]]+\s*($|;|--|#|,|\b(add|drop|modify|cascade|rename|change)\b)",
        ),
        (
            "sqli-ddl",
            r"\bcreate\s+(or\s+replace\s+)?(table|database|schema|procedure|function|user|trigger|view)\s+[\w`.]+\s*(\(|as\b|returns\b)",
        ),
        (
            "sqli-exec",
            r"\bexec(ute)?\s*(\(\s*['\x22@]|@|master\.|xp_|sp_)",
        ),
        ("sqli-declare", r"\bdeclare\s+@"),
        ("sqli-set-var", r"(^|;)\s*set\s+@@?\w+\s*[:=]?"),
        ("sqli-waitfor", r"\bwaitfor\s+(delay|time)\b"),
        ("sqli-outfile", r"\binto\s+(out|dump)file\b"),
        ("sqli-procedure-analyse", r"\bprocedure\s+analyse\b"),
        ("sqli-order-by", r"\border\s+by\s+\d+\s*($|--|#|;|,|\))"),
        ("sqli-group-having", r"\bgroup\s+by\b.{1,80}\bhaving\b"),
        ("sqli-having", r"\bhaving\s+\d+\s*[=<>]"),
        ("sqli-case-when", r"\bcase\s+when\b.{1,100}\bthen\b"),
        (
            "sqli-schema",
            r"\b(information_schema|pg_catalog|pg_shadow|pg_user|pg_database|mysql\.user|sysobjects|syscolumns|sysdatabases|msysaccessobjects|msysobjects|sqlite_master|sqlite_schema|all_tables|user_tables|tempdb|master\.dbo|dbms_\w+|utl_(http|inaddr|file|smtp))\b",
        ),
        (
            "sqli-system-var",
            r"@@(version|datadir|hostname|basedir|servername|global|session|tmpdir)\b",
        ),
        (
            "sqli-xp",
            r"\b(xp_(cmdshell|regread|dirtree|fileexist|regwrite|availablemedia|servicecontrol)|sp_(executesql|password|oacreate|oamethod|makewebtask|addsrvrolemember|configure|addlogin|execute|prepare|helpdb)|msdasql|sqloledb)\b",
        ),
        (
            "sqli-pg-cast",
            // after a literal or a bracket any type; after a bare name
            // (`password::int`) the casts an injection uses, and not inside a
            // `::` path (Perl's `Math::Vector::Real`, C++'s `nlohmann::json`)
            r"[\d'\x22`)\]]\s*::\s*(int|integer|int4|int8|bigint|bool|boolean|text|jsonb?|varchar|numeric|regclass|oid|bytea|double\s+precision|float|real|inet|xml)\b|(^|[^:\w])[a-z_]\w*\s*::\s*(int|integer|int4|int8|bigint|bool|boolean|text|varchar|numeric|regclass|oid|bytea|float|inet)($|[^\w:])",
        ),
        (
            "sqli-select-from",
            r"\bselect\s+(top\s+\d+\s+|distinct\s+)?(\*|[\w`.]+(\s*,\s*[\w`.'()]+)+|@@?\w+|'[^']*'|\d+|null)\s*(,|from\b|$|--|#|;|\))",
        ),
        ("sqli-subselect", r"\(\s*select\b"),
        ("sqli-select-func", r"\bselect\s+[\w.]+\s*\("),
        (
            "sqli-char-concat",
            r"\b(n?char|chr)\s*\(\s*\d+\s*\)\s*(\+|\|\|)",
        ),
        ("sqli-hex-concat", r"\bconcat(_ws)?\s*\(\s*0x[0-9a-f]+"),
        (
            "sqli-nosql",
            r"\[\s*\$(ne|eq|gt|gte|lt|lte|in|nin|regex|where|exists|elemmatch|or|and|not|nor|expr|type|size|all|mod|text|jsonschema)\s*\]",
        ),
        (
            "sqli-nosql",
            r"^\$(ne|eq|gt|gte|lt|lte|in|nin|regex|where|exists|elemmatch|or|and|not|nor|expr|type|size|all|mod|text|jsonschema|function|accumulator|lookup)$",
        ),
        // the dotted form of `user[$ne]` (qs's `allowDots`, Mongo paths)
        (
            "sqli-nosql",
            r"\w\.\$(ne|eq|gt|gte|lt|lte|in|nin|regex|where|exists|elemmatch|or|and|not|nor|expr|type|size|all|mod|text|jsonschema)$",
        ),
        ("sqli-like-wildcard", r"^'?\s*(or|and)?\s*like\s*'%"),
        ("sqli-types", r"\b(nvarchar|varchar2?|nchar)\b\s*(\(|$)"),
        (
            "sqli-alter-short",
            r"^['`\x22]\s*(alter|drop|truncate|shutdown)\b",
        ),
        (
            "sqli-as-from",
            r"(\d|[)`'\x22!])\s*as\s*[`'\x22]?[\w]*[`'\x22]?\s+from\b",
        ),
        (
            "sqli-json-op",
            r"'\s*::\s*jsonb?\s*(<@|@>|\?)|(<@|@>)\s*'\{",
        ),
        ("sqli-sleep", r"\b(sleep|benchmark|pg_sleep)\s*\(\s*\d"),
        ("sqli-like-probe", r"\blike\s+(null\b|['\x22]\s*$|'%)"),
        ("sqli-values-list", r"\bvalues\s*\(\s*('[^']*'|\d+)\s*,"),
        ("sqli-magic-number", r"^2\.2250738585072011e-308$"),
        ("sqli-select-snake", r"\bselect\s+([a-z]+_[a-z_]+|@@?\w+)"),
        ("sqli-case-fragment", r"\bwhen\s+[\d'(]\S*\s+then\b"),
        (
            "sqli-create-table",
            r"[;'\x22`)/]\s*create\s+(temporary\s+)?table\s+[\w`.]+|\bcreate\s+(temporary\s+)?table\s+[\w`.]+\s*(\(|;|--|#|\bas\b|\bselect\b)",
        ),
        (
            "sqli-from-where",
            r"\bfrom\s+[\w`.]+\s+where\s+[\w`.]+\s*(=|<|>|like\b|in\s*\()",
        ),
        (
            "sqli-tautology-str",
            r"'\s*(or|and|\|\||&&)\s*'[^']*'\s*(=|<>|!=|like)\s*'",
        ),
        // MySQL reads `1.e(` as the number 1.0 glued to what follows: the
        // bypass of filters that want a blank before a function or `)`
        ("sqli-scientific-glue", r"\d\.e[(),]"),
    ];
    let set = RegexSet::new(rules.iter().map(|(_, r)| *r)).unwrap_or_else(|_| RegexSet::empty());
    (set, rules.iter().map(|(id, _)| *id).collect())
});

/// Inline comments to a blank, for the grammar rules (`sel/**/ect` is not
/// SQL, but `union/**/select` is).
pub(crate) fn strip_comments(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains("/*") {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find("/*") {
        out.push_str(&rest[..p]);
        out.push(' ');
        let after = &rest[p + 2..];
        let after = after
            .strip_prefix('!')
            .map(|a| a.trim_start_matches(|c: char| c.is_ascii_digit()))
            .unwrap_or(after);
        match after.find("*/") {
            Some(e) => rest = &after[e + 2..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Check a folded value; the id of the first matching rule.
pub fn check(folded: &str) -> Option<&'static str> {
    if word_and_date(folded) {
        return None;
    }
    let b = folded.as_bytes();
    let plain = fingerprint(b, Ctx::None);
    // a value that is nothing but an operator (`||`, `!=`, `<>`) is a probe
    if (plain == b"&" || plain == b"=") && !b.iter().any(u8::is_ascii_alphabetic) {
        return Some("sqli-bare-operator");
    }
    if let Some(id) = shapes(&PLAIN_SHAPES, &plain) {
        return Some(id);
    }
    if number_tautology(folded) {
        return Some("sqli-number-tautology");
    }
    for q in [b'\'', b'"', b'`'] {
        if b.contains(&q) {
            let fp = fingerprint(b, Ctx::Quote(q));
            if fp.len() >= 2 {
                if let Some(id) = shapes(&QUOTE_SHAPES, &fp) {
                    return Some(id);
                }
            }
        }
    }
    // an optimizer hint `/*+ ... */` (MySQL, Oracle) after a blank, `(` or
    // `,` is SQL syntax only (`application/*+json, */*` is a media range)
    if folded.match_indices("/*+").any(|(p, _)| {
        let after_blank =
            p == 0 || matches!(b.get(p - 1), Some(b' ' | b'\t' | b'\n' | b'(' | b','));
        after_blank && folded.get(p + 3..).is_some_and(|r| r.contains("*/"))
    }) {
        return Some("sqli-hint-comment");
    }
    let text = strip_comments(folded);
    let (set, ids) = &*GRAMMAR;
    set.matches(&text)
        .iter()
        .next()
        .and_then(|i| ids.get(i).copied())
}

/// A search word and a calendar date, nothing else (`or 2023-12-05`,
/// `select 2024-01-31`: a package synopsis's first word and a day). English;
/// as SQL, a syntax error wherever a value goes, and the tautology it could
/// start is already caught in its short form (`or 1`).
fn word_and_date(folded: &str) -> bool {
    let Some((word, date)) = folded.trim().split_once(' ') else {
        return false;
    };
    let d = date.trim().as_bytes();
    (1..=24).contains(&word.len())
        && word.bytes().all(|c| c.is_ascii_alphabetic())
        && d.len() == 10
        && d.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// A value that is only a *true* comparison of two numbers with an operator
/// prose does not use (`11!=1`, `1 is not 2`, `42<=>42`): the probe for a
/// boolean context. A false one (`11!=11`) is left alone, as CRS does.
fn number_tautology(folded: &str) -> bool {
    static RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
        Regex::new(r"^\s*(\d{1,18})\s*(!=|<>|<=>|\bis\s+not\b)\s*(\d{1,18})\s*$").ok()
    });
    let Some(c) = RE.as_ref().and_then(|re| re.captures(folded)) else {
        return false;
    };
    let num = |i| c.get(i).and_then(|m| m.as_str().parse::<u64>().ok());
    let (Some(a), Some(b)) = (num(1), num(3)) else {
        return false;
    };
    match c.get(2).map(|m| m.as_str()) {
        Some("<=>") => a == b,
        Some(_) => a != b,
        None => false,
    }
}

fn shapes(list: &[(&'static str, Regex)], fp: &[u8]) -> Option<&'static str> {
    let s = std::str::from_utf8(fp).ok()?;
    list.iter().find(|(_, r)| r.is_match(s)).map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_number_comparisons_are_probes_false_ones_are_not() {
        for v in ["11!=1", "1 <> 2", "42<=>42", "1 is not 2", " 7 != 8 "] {
            assert_eq!(check(v), Some("sqli-number-tautology"), "{v}");
        }
        for v in [
            "11!=11",
            "1 is not 1",
            "1<=>2",
            "3 > 2",
            "1.5 != 2",
            "page 1 != 2",
        ] {
            assert_ne!(check(v), Some("sqli-number-tautology"), "{v}");
        }
    }

    fn fp(s: &str) -> String {
        String::from_utf8(fingerprint(s.as_bytes(), Ctx::None)).unwrap_or_default()
    }

    #[test]
    fn fingerprints() {
        assert_eq!(fp("1 or 1=1"), "n&n=n");
        assert_eq!(fp("union all select null--"), "UkSnc");
        assert_eq!(fp("sleep(5)"), "f(n)");
        assert_eq!(fp("version(s)"), "b(b)");
    }

    #[test]
    fn injections() {
        for s in [
            "1234 or 1=1",
            "-1839' or '1'='1",
            "foo') union all select null --",
            "1' and sleep(9) #",
            "admin'--",
            "'; drop table users; --",
            "1;waitfor delay '0:0:5'--",
            "' or true; foo",
            "x' or 'x' <",
            "1 union select 1,2,3",
            "concat(0x7e,version())",
            "1.e(ascii)",
            "1 and 1.e,user()",
            "9999 or /*+optimizer hint */ true",
            "select /*+ index(users) */ name from users",
        ] {
            assert!(check(s).is_some(), "{s}");
        }
    }

    #[test]
    fn english() {
        for s in [
            "please select the union of two sets",
            "drop me a line",
            "it is highly unlikely this is going to be a false positive",
            "bob's or alice's",
            "i sleep well!",
            "gnu c library: shared libraries",
            "secure shell (ssh) client, for secure access to remote machines",
            "select one from the list",
            "manage user(s) and group(s)",
            "1 is not 1",
            "see section 1.e of the manual",
            "version 2.e3 of the spec",
            "glob src/**/*.rs and /*+",
            "accept application/*+json, */*",
        ] {
            assert!(check(s).is_none(), "{s}: {:?}", check(s));
        }
    }
}
