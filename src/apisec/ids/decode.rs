//! Decoding: turn a raw value into the form the rules match.
//!
//! The attacker controls the encoding, so every rule sees the value after
//! the transformations a server, a browser or a shell could apply:
//! `+` as space (query and form values), percent-decoding (repeated, with
//! `%uXXXX` and overlong UTF-8 dots and slashes), HTML entities (named,
//! decimal, hex, with or without `;`), `\uXXXX` / `\u{X}` / `\xHH` escapes,
//! full-width ASCII folded to ASCII, NUL bytes dropped, whitespace runs
//! collapsed, and case folding. Decoding repeats until the value stops
//! changing (at most [`MAX_ROUNDS`] rounds), so double encoding does not hide
//! a payload.

use std::borrow::Cow;

/// Rounds of decoding before we stop (a value still changing after this
/// many rounds is decoded as far as we got).
pub const MAX_ROUNDS: usize = 4;

/// A value in the forms the rules use.
pub struct Decoded {
    /// Fully decoded, case preserved (base64 checks need the case).
    pub text: String,
    /// `text` lower-cased, whitespace runs collapsed to one space
    /// (newlines kept as `\n`), NUL dropped.
    pub folded: String,
}

/// Decode a value. `plus` says whether `+` means space (query strings and
/// form bodies).
pub fn decode(raw: &str, plus: bool) -> Decoded {
    let mut cur: Cow<str> = Cow::Borrowed(raw);
    if plus && cur.contains('+') {
        cur = Cow::Owned(cur.replace('+', " "));
    }
    for _ in 0..MAX_ROUNDS {
        let mut changed = false;
        if cur.contains('%') {
            if let Some(s) = percent_decode(&cur) {
                cur = Cow::Owned(s);
                changed = true;
            }
        }
        if cur.contains('&') {
            if let Some(s) = html_entities(&cur) {
                cur = Cow::Owned(s);
                changed = true;
            }
        }
        if cur.contains('\\') {
            if let Some(s) = backslash_escapes(&cur) {
                cur = Cow::Owned(s);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let text = fold_width(&cur);
    let folded = fold(&text);
    Decoded { text, folded }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex_at(b: &[u8], i: usize, n: usize) -> Option<u32> {
    let mut v: u32 = 0;
    for k in 0..n {
        v = v * 16 + u32::from(hex(*b.get(i + k)?)?);
    }
    Some(v)
}

/// One round of percent-decoding; `None` when nothing was decoded.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut changed = false;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            // %uXXXX (IIS style)
            if matches!(b.get(i + 1), Some(b'u' | b'U')) {
                if let Some(cp) = hex_at(b, i + 2, 4) {
                    push_char(&mut out, cp);
                    i += 6;
                    changed = true;
                    continue;
                }
            }
            if let Some(v) = hex_at(b, i + 1, 2) {
                // overlong UTF-8 encodings of ASCII ('.' as %c0%ae,
                // %e0%80%ae or %f0%80%80%ae): what a lenient decoder
                // behind makes of them
                if let Some((c, len)) = overlong_ascii(b, i, v) {
                    out.push(c);
                    i += len;
                    changed = true;
                    continue;
                }
                out.push(v as u8);
                i += 3;
                changed = true;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    if !changed {
        return None;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// The ASCII character an overlong UTF-8 sequence written as percent
/// escapes stands for, starting at `b[i]` (`%`, lead byte `lead` already
/// read), and the length of its escapes; `None` when it is not one.
fn overlong_ascii(b: &[u8], i: usize, lead: u32) -> Option<(u8, usize)> {
    let (n, mut cp) = match lead {
        0xc0 | 0xc1 => (2, lead & 0x1f),
        0xe0 => (3, 0),
        0xf0 => (4, 0),
        _ => return None,
    };
    for k in 1..n {
        let at = i + 3 * k;
        if b.get(at) != Some(&b'%') {
            return None;
        }
        let cont = hex_at(b, at + 1, 2)?;
        if !(0x80..=0xbf).contains(&cont) {
            return None;
        }
        cp = (cp << 6) | (cont & 0x3f);
    }
    (cp < 0x80).then_some((cp as u8, 3 * n))
}

fn push_char(out: &mut Vec<u8>, cp: u32) {
    let c = char::from_u32(cp).unwrap_or('\u{fffd}');
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// Named entities that matter for injection (the characters an attacker
/// needs); unknown names are left alone.
fn named_entity(name: &str) -> Option<&'static str> {
    Some(match name {
        "lt" => "<",
        "gt" => ">",
        "quot" => "\"",
        "apos" => "'",
        "amp" => "&",
        "tab" => "\t",
        "newline" => "\n",
        "nbsp" => " ",
        "colon" => ":",
        "semi" => ";",
        "lpar" => "(",
        "rpar" => ")",
        "lcub" | "lbrace" => "{",
        "rcub" | "rbrace" => "}",
        "lsqb" | "lbrack" => "[",
        "rsqb" | "rbrack" => "]",
        "sol" => "/",
        "bsol" => "\\",
        "num" => "#",
        "dollar" => "$",
        "period" => ".",
        "comma" => ",",
        "equals" => "=",
        "excl" => "!",
        "quest" => "?",
        "grave" => "`",
        "vert" | "verbar" => "|",
        "percnt" => "%",
        "plus" => "+",
        "ast" | "midast" => "*",
        "commat" => "@",
        "hat" => "^",
        "lowbar" => "_",
        "apos;" => "'",
        _ => return None,
    })
}

/// One round of HTML entity decoding; `None` when nothing was decoded.
fn html_entities(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    let mut changed = false;
    while let Some(&c) = b.get(i) {
        if c != b'&' {
            i += 1;
            continue;
        }
        let start = i;
        let mut j = i + 1;
        let mut decoded: Option<(String, usize)> = None;
        if b.get(j) == Some(&b'#') {
            j += 1;
            let is_hex = matches!(b.get(j), Some(b'x' | b'X'));
            if is_hex {
                j += 1;
            }
            let ds = j;
            // leading zeros carry nothing, however many (`&#0000…0060;`)
            while b.get(j) == Some(&b'0') {
                j += 1;
            }
            let digits = j;
            let mut v: u32 = 0;
            while let Some(&c) = b.get(j).filter(|_| j - digits < 40) {
                let d = if is_hex {
                    hex(c).map(u32::from)
                } else if c.is_ascii_digit() {
                    Some(u32::from(c - b'0'))
                } else {
                    None
                };
                match d {
                    Some(d) => {
                        v = v
                            .saturating_mul(if is_hex { 16 } else { 10 })
                            .saturating_add(d);
                        j += 1;
                    }
                    None => break,
                }
            }
            if j > ds {
                if b.get(j) == Some(&b';') {
                    j += 1;
                }
                let c = char::from_u32(v).unwrap_or('\u{fffd}');
                decoded = Some((c.to_string(), j));
            }
        } else {
            let ns = j;
            while j - ns < 10 && b.get(j).is_some_and(u8::is_ascii_alphabetic) {
                j += 1;
            }
            // `ns..j` spans ASCII letters only: always a valid str range
            if let Some(name) = s.get(ns..j).filter(|n| !n.is_empty()) {
                let name = name.to_ascii_lowercase();
                if let Some(rep) = named_entity(&name) {
                    if b.get(j) == Some(&b';') {
                        j += 1;
                    }
                    decoded = Some((rep.to_string(), j));
                } else if b.get(j) != Some(&b';') {
                    // without `;` a browser takes the longest known name
                    // and leaves the letters after it (`&lbracejndi:`)
                    decoded = (2..name.len()).rev().find_map(|n| {
                        let rep = named_entity(name.get(..n)?)?;
                        Some((rep.to_string(), ns + n))
                    });
                }
            }
        }
        match decoded {
            Some((rep, end)) => {
                // `last` and `start` sit on ASCII bytes (`;`, `&`, a letter
                // or digit, or the start): char boundaries
                out.push_str(s.get(last..start).unwrap_or_default());
                out.push_str(&rep);
                last = end;
                i = end;
                changed = true;
            }
            None => i += 1,
        }
    }
    if !changed {
        return None;
    }
    out.push_str(s.get(last..).unwrap_or_default());
    Some(out)
}

/// `\uXXXX`, `\u{X..}` and `\xHH` escapes (JavaScript, JSON, C); `None` when
/// nothing was decoded.
fn backslash_escapes(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut changed = false;
    while let Some(&c) = b.get(i) {
        if c == b'\\' {
            match b.get(i + 1) {
                Some(b'u' | b'U') => {
                    if b.get(i + 2) == Some(&b'{') {
                        let mut j = i + 3;
                        let mut v: u32 = 0;
                        while let Some(&h) = b.get(j).filter(|_| j - i < 12) {
                            match hex(h) {
                                Some(d) => v = v.saturating_mul(16).saturating_add(u32::from(d)),
                                None => break,
                            }
                            j += 1;
                        }
                        if b.get(j) == Some(&b'}') && j > i + 3 {
                            push_char(&mut out, v);
                            i = j + 1;
                            changed = true;
                            continue;
                        }
                    } else if let Some(cp) = hex_at(b, i + 2, 4) {
                        push_char(&mut out, cp);
                        i += 6;
                        changed = true;
                        continue;
                    }
                }
                Some(b'x' | b'X') => {
                    if let Some(v) = hex_at(b, i + 2, 2) {
                        out.push(v as u8);
                        i += 4;
                        changed = true;
                        continue;
                    }
                }
                _ => {}
            }
        }
        out.push(c);
        i += 1;
    }
    if !changed {
        return None;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Full-width ASCII (U+FF01..U+FF5E), circled letters and digits, and a
/// few look-alikes to ASCII; zero-width characters and combining marks are
/// dropped, since a browser or a lenient parser renders or strips them and
/// `<\u{200b}script>` or `s\u{301}elect` would otherwise match no rule.
fn fold_width(s: &str) -> String {
    if s.is_ascii() {
        return s.to_string();
    }
    s.chars()
        .filter(|c| !is_invisible(*c))
        .map(|c| match c {
            '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xff01 + 0x21).unwrap_or(c),
            // circled letters and digits (enclosed alphanumerics)
            '\u{24b6}'..='\u{24cf}' => char::from_u32(c as u32 - 0x24b6 + 0x41).unwrap_or(c),
            '\u{24d0}'..='\u{24e9}' => char::from_u32(c as u32 - 0x24d0 + 0x61).unwrap_or(c),
            '\u{2460}'..='\u{2468}' => char::from_u32(c as u32 - 0x2460 + 0x31).unwrap_or(c),
            '\u{24ea}' => '0',
            '\u{3002}' | '\u{ff61}' => '.',
            '\u{2044}' | '\u{2215}' => '/',
            '\u{00a0}' | '\u{3000}' => ' ',
            '\u{2018}' | '\u{2019}' | '\u{02bc}' => '\'',
            '\u{201c}' | '\u{201d}' => '"',
            _ => c,
        })
        .collect()
}

/// Unicode's default-ignorable code points (zero-width spaces and joiners,
/// the soft hyphen, bidirectional marks and overrides, the word joiner and
/// invisible operators, variation selectors, Hangul fillers, the byte-order
/// mark, tag characters) and combining diacritical marks (U+0300..U+036F):
/// renderers show none of them, so none may split a keyword.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{034f}'
            | '\u{061c}'
            | '\u{115f}'..='\u{1160}'
            | '\u{17b4}'..='\u{17b5}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e0fff}'
            | '\u{0300}'..='\u{036f}'
    )
}

/// Lower-case, drop NUL and other C0 controls except newline, collapse runs
/// of blanks (a run with a newline becomes `\n`).
fn fold(s: &str) -> String {
    if s.is_ascii() {
        return fold_ascii(s.as_bytes());
    }
    fold_chars(s)
}

fn fold_chars(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending: Option<char> = None;
    for c in s.chars() {
        match c {
            '\0' => {}
            '\n' => pending = Some('\n'),
            ' ' | '\t' | '\r' | '\u{b}' | '\u{c}' => {
                if pending.is_none() {
                    pending = Some(' ');
                }
            }
            c if c.is_control() => {}
            c => {
                if let Some(p) = pending.take() {
                    out.push(p);
                }
                for l in c.to_lowercase() {
                    out.push(l);
                }
            }
        }
    }
    if let Some(p) = pending {
        out.push(p);
    }
    out
}

/// [`fold`] for ASCII text (most values), a byte at a time: the same
/// result without decoding chars or the Unicode lower-case tables.
fn fold_ascii(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut pending: Option<u8> = None;
    for &b in s {
        match b {
            b'\n' => pending = Some(b'\n'),
            b' ' | b'\t' | b'\r' | 0x0b | 0x0c => {
                if pending.is_none() {
                    pending = Some(b' ');
                }
            }
            b if b.is_ascii_control() => {}
            b => {
                if let Some(p) = pending.take() {
                    out.push(p);
                }
                out.push(b.to_ascii_lowercase());
            }
        }
    }
    if let Some(p) = pending {
        out.push(p);
    }
    // only ASCII bytes were pushed
    String::from_utf8(out).unwrap_or_default()
}

/// The value with every whitespace and control character removed (for
/// checks an attacker can split with blanks, such as `java\tscript:`).
pub fn squeeze(folded: &str) -> String {
    folded
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .collect()
}

/// Undo shell word-splitting tricks that keep a command name from
/// matching: quotes inside words (`c'a't`, `""p""y`), backslashes (`c\\at`),
/// empty special parameters (`c$@at`, `c$?at`), empty backquotes
/// (`pi``ng`) and one-character bracket globs (`adduse[r]`); and, in a
/// value holding a shell separator, cmd.exe's `^` inside a word, and a `+`
/// glued between two words read as
/// the blank a form decoder would have made of it (`;cat+/etc/passwd` in
/// JSON or behind `%2B`; base64 such as `if+foo==` holds no separator, and
/// `a + b` is an operator). `None` when nothing changes.
pub fn unsplit(folded: &str) -> Option<String> {
    let separated = folded.contains([';', '|', '&', '`', '\n']);
    let plus_is_blank = separated && folded.contains('+');
    if !plus_is_blank && !folded.contains(['\'', '"', '\\', '$', '`', '[', '^']) {
        return None;
    }
    let b = folded.as_bytes();
    let mut out = String::with_capacity(folded.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'\'' | b'"' | b'\\' => i += 1,
            b'+' if plus_is_blank
                && i > 0
                && b.get(i - 1).is_some_and(|c| !c.is_ascii_whitespace())
                && b.get(i + 1).is_some_and(|c| !c.is_ascii_whitespace()) =>
            {
                out.push(' ');
                i += 1;
            }
            b'$' if matches!(
                b.get(i + 1),
                Some(b'@' | b'*' | b'?' | b'-' | b'_' | b'#' | b'!')
            ) =>
            {
                i += 2
            }
            b'`' if b.get(i + 1) == Some(&b'`') => i += 2,
            // cmd.exe's escape inside a word (`;w^h^o^a^m^i`), in a value
            // holding a separator
            b'^' if separated
                && i > 0
                && b.get(i - 1).is_some_and(|c| c.is_ascii_alphanumeric())
                && b.get(i + 1).is_some_and(|c| c.is_ascii_alphanumeric()) =>
            {
                i += 1
            }
            b'[' if b.get(i + 2) == Some(&b']') => match b.get(i + 1) {
                Some(&g) if g.is_ascii_alphanumeric() => {
                    out.push(char::from(g));
                    i += 3;
                }
                _ => i = push_char_at(&mut out, folded, i),
            },
            _ => i = push_char_at(&mut out, folded, i),
        }
    }
    (out != folded).then_some(out)
}

/// `text` with its control characters other than NUL as blanks, when it
/// holds one that is not a tab or a line end: SQL Server reads 0x01-0x1f
/// as whitespace (`1%0bor%0c1=1`), so `sqli` reads them as blanks too.
pub fn blank_controls(text: &str) -> Option<String> {
    text.bytes()
        .any(|b| b < 0x20 && b != 0 && !matches!(b, b'\t' | b'\n' | b'\r'))
        .then(|| {
            text.chars()
                .map(|c| if c < ' ' && c != '\0' { ' ' } else { c })
                .collect()
        })
}

/// Copy the char of `s` that starts at byte `i` (a char boundary) to `out`;
/// the index after it.
fn push_char_at(out: &mut String, s: &str, i: usize) -> usize {
    match s.get(i..).and_then(|rest| rest.chars().next()) {
        Some(ch) => {
            out.push(ch);
            i + ch.len_utf8()
        }
        None => i + 1,
    }
}

/// A Log4Shell lookup, with the nested `${...:-x}` / `${lower:x}`
/// obfuscations folded away: does the value look up `jndi:`?
pub fn jndi_lookup(folded: &str) -> bool {
    if !folded.contains("${") {
        return false;
    }
    let mut s = folded.replace("${", "").replace('}', "");
    for pat in ["lower:", "upper:", "::-", ":-", "env:", "sys:", "date:"] {
        s = s.replace(pat, "");
    }
    let squeezed: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    squeezed.contains("jndi:")
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The ASCII fast path folds exactly as the general one.
        #[test]
        fn ascii_fold_matches_the_general_fold(s in "[\\x00-\\x7f]{0,64}") {
            proptest::prop_assert_eq!(fold_ascii(s.as_bytes()), fold_chars(&s));
        }
    }

    #[test]
    fn layers_of_encoding() {
        assert_eq!(decode("%253Cscript%253E", false).folded, "<script>");
        assert_eq!(decode("a+b", true).folded, "a b");
        assert_eq!(decode("a+b", false).folded, "a+b");
        assert_eq!(decode("%uff1cscript%uff1e", false).folded, "<script>");
        assert_eq!(decode("&#60;x&#x3e;&lt;", false).folded, "<x><");
        assert_eq!(
            decode("ja&tab;vascript&colon;", false).text,
            "ja\tvascript:"
        );
        assert_eq!(decode("\\u0072equire", false).folded, "require");
        assert_eq!(decode("%c0%ae%c0%ae/", false).folded, "../");
        // three- and four-byte overlong forms too
        assert_eq!(decode("..%e0%80%af..%E0%80%AF", false).folded, "../../");
        assert_eq!(decode("%e0%80%bcscript", false).folded, "<script");
        assert_eq!(decode("%f0%80%80%a7", false).folded, "'");
        // a real three-byte character is left as it is
        assert_eq!(decode("%e2%82%ac", false).folded, "\u{20ac}");
        assert_eq!(decode("A\0B  \t C", false).folded, "ab c");
        assert_eq!(decode("x\r\n  y", false).folded, "x\ny");
    }

    #[test]
    fn invisible_characters_are_dropped() {
        assert_eq!(decode("<\u{200b}script>", false).folded, "<script>");
        assert_eq!(
            decode("%E2%80%8Bun\u{2060}ion s\u{200c}el\u{feff}ect", false).folded,
            "union select"
        );
        assert_eq!(decode("s\u{301}e\u{300}lect", false).folded, "select");
        assert_eq!(decode("j\u{200d}avascript:", false).text, "javascript:");
        // precomposed letters are left alone
        assert_eq!(decode("caf\u{e9}", false).folded, "caf\u{e9}");
    }

    #[test]
    fn shell_and_lookup_tricks() {
        assert_eq!(
            unsplit("c'a't /et$@c/passwd").as_deref(),
            Some("cat /etc/passwd")
        );
        assert_eq!(unsplit("pi``ng").as_deref(), Some("ping"));
        assert_eq!(unsplit("plain"), None);
        // a glued `+` is a blank only where a shell separator makes the
        // value a command line: not in base64, not as an operator
        assert_eq!(
            unsplit("x;c'a't+/etc/passwd").as_deref(),
            Some("x;cat /etc/passwd")
        );
        assert_eq!(unsplit("if+foo=="), None);
        assert_eq!(unsplit("x; a + b").as_deref(), None);
        assert!(jndi_lookup("${${::-j}${lower:n}di:ldap://x}"));
        assert!(!jndi_lookup("${home}/jndi"));
    }
}
