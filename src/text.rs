//! Log-safe text: outside text (a server's answer, a message body, an error chain) cut,
//! made one line and stripped of credentials before it reaches a log line, an error or a
//! page. A leaf: every client uses it, it uses nothing of the crate.

/// Cuts outside text to `max` characters, marking the cut with `…`. Callers quote the result
/// with `{:?}`, which escapes what would break a line.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// At most `max` bytes (PagerDuty counts its limits in bytes), cut at a character boundary,
/// ending with `mark` when cut.
pub fn cut_bytes(text: &str, max: usize, mark: &str) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(mark.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{mark}", &text[..end])
}

/// `a: b: c` from an error and its sources, each said once.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Outside text as one log line of at most `max` chars: control and line-breaking
/// characters become spaces, runs of spaces one, and a longer text is cut with `…`.
pub fn one_line(text: &str, max: usize) -> String {
    let mut line = String::with_capacity(text.len().min(max.saturating_mul(4)));
    let mut last_space = true;
    for c in text.chars() {
        let c = if breaks_log_line(c) || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' {
            if last_space {
                continue;
            }
            last_space = true;
        } else {
            last_space = false;
        }
        line.push(c);
    }
    let line = line.trim_end();
    if line.chars().count() <= max {
        return line.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut cut: String = line.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// Control characters, Unicode line and paragraph separators, and the bidirectional
/// overrides that can make a log line read differently from what it holds.
pub fn breaks_log_line(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Replaces the string value after every one of `keys` with `<redacted>`, on the raw text,
/// however many times the JSON is escaped (a JSON string inside a JSON string...). Linear in
/// the body for each key: a key's next place is looked for again only once passed.
pub fn redact_string_values(body: &str, keys: &[&str]) -> String {
    const MARK: &str = "<redacted>";
    let mut out = String::with_capacity(body.len());
    let mut done = 0;
    let mut next: Vec<Option<usize>> = keys.iter().map(|k| body.find(k)).collect();
    while let Some((at, key)) = next
        .iter()
        .zip(keys)
        .filter_map(|(at, key)| at.map(|at| (at, key)))
        .min()
    {
        let after_key = at + key.len();
        out.push_str(&body[done..after_key]);
        done = after_key;
        // Left alone when no string value follows (`null`, a mention in some other text).
        if let Some(start) = value_start(&body[done..]) {
            out.push_str(&body[done..done + start]);
            done += start;
            // The value runs to its closing quote, escaped or not, or to the end of a cut body.
            let end = value_end(&body[done..]);
            if end > 0 {
                out.push_str(MARK);
            }
            done += end;
        }
        for (at, key) in next.iter_mut().zip(keys) {
            if at.is_some_and(|at| at < done) {
                *at = body[done..].find(key).map(|found| done + found);
            }
        }
    }
    out.push_str(&body[done..]);
    out
}

/// Where a string value ends: at its closing quote, escaped any number of times, or at the
/// end of a cut body. Other escapes (`\/`, `\\/`) are part of the value.
fn value_end(value: &str) -> usize {
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return i,
            b'\\' => {
                let mut j = i;
                while bytes.get(j) == Some(&b'\\') {
                    j += 1;
                }
                if bytes.get(j) == Some(&b'"') {
                    return i;
                }
                i = j;
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Where the string value starts in the text after the key: its closing quote, spaces, a
/// colon, spaces and the value's opening quote. Inside an SNS `Message` these are escaped
/// once (`\"`, and spaces may be written `\n`), inside an envelope in an envelope twice
/// (`\\\"`): every level is skipped.
fn value_start(after_key: &str) -> Option<usize> {
    let bytes = after_key.as_bytes();
    let skip_escapes = |mut i: usize| {
        while bytes.get(i) == Some(&b'\\') {
            i += 1;
        }
        i
    };
    // Spaces, written plainly or as escapes (`\n`, `\\\t`, ...).
    let skip_space = |mut i: usize| loop {
        let j = skip_escapes(i);
        match bytes.get(j) {
            Some(b) if b.is_ascii_whitespace() => i = j + 1,
            Some(b'n' | b'r' | b't') if j > i => i = j + 1,
            _ => return i,
        }
    };
    let mut i = skip_escapes(0);
    if bytes.get(i) != Some(&b'"') {
        return None;
    }
    i = skip_space(i + 1);
    if bytes.get(i) != Some(&b':') {
        return None;
    }
    i = skip_escapes(skip_space(i + 1));
    if bytes.get(i) != Some(&b'"') {
        return None;
    }
    // Every byte skipped is ASCII, so this is a char boundary.
    Some(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_of_several_keys_stays_linear() {
        // A key that never occurs is not looked for again at every occurrence of another.
        let body = r#"{"token":"abc","x":"token"},"#.repeat(50_000);
        let out = redact_string_values(&body, &["registrationUrl", "token"]);
        assert_eq!(out.matches("<redacted>").count(), 50_000);
        assert!(!out.contains("abc"));
    }

    #[test]
    fn shorten_keeps_short_text() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdef", 3), "abc…");
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        assert_eq!(cut_bytes("abc", 3, "…"), "abc");
        let cut = cut_bytes(&"é".repeat(10), 9, "…");
        assert!(cut.len() <= 9 && cut.ends_with('…'), "{cut}");
        assert_eq!(cut_bytes(&"ü".repeat(300), 11, ""), "ü".repeat(5));
    }

    #[test]
    fn one_line_folds_breaks_and_runs_of_space() {
        assert_eq!(
            one_line("first\nsecond\r\n  third", 100),
            "first second third"
        );
        assert_eq!(one_line("  lead", 100), "lead");
        assert_eq!(one_line("abcdef", 4), "abc…");
    }

    #[test]
    fn error_chains_say_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner")]
        struct Inner;
        assert_eq!(error_chain(&Outer(Inner)), "outer: inner");
    }
}
