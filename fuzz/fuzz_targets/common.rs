//! Shared by the targets: marking the secrets an input carries, so that "never shown" can
//! be checked without false alarms.
//!
//! A secret found in an input (a token, a registration URL, a secret key) may also happen
//! to be a piece of some fixed text an error prints (`" https://r"` is in every Rancher
//! error's URL). So each one is replaced, where it stands in the input, by a marker of the
//! same length that no fixed text holds; the parser then reads the marked input, and a
//! marker in its output can only be a secret shown.

/// Every marker starts so; an input that already holds it is not marked.
const PREFIX: &str = "SMQ";

/// `input` with each of `secrets` (texts that occur exactly once in it, 8 characters or
/// more, of `[A-Za-z0-9-]` only when `token_alphabet`) replaced by its marker, and the
/// markers; `None` when there is nothing to mark.
pub fn mark(input: &str, secrets: &[String]) -> Option<(String, Vec<String>)> {
    if input.contains(PREFIX) {
        return None;
    }
    let mut marked = input.to_string();
    let mut markers = Vec::new();
    for (i, secret) in secrets.iter().enumerate().take(10) {
        let len = secret.len();
        if len < 8 || marked.matches(secret.as_str()).count() != 1 {
            continue;
        }
        let marker = format!("{PREFIX}{i}{}", "Z".repeat(len - PREFIX.len() - 1));
        marked = marked.replacen(secret.as_str(), &marker, 1);
        markers.push(marker);
    }
    (!markers.is_empty()).then_some((marked, markers))
}

/// Panics when `shown` holds any of `markers`.
pub fn assert_hidden(shown: &str, markers: &[String], what: &str) {
    for m in markers {
        assert!(
            !shown.contains(m.as_str()),
            "{what} shows a secret ({m}): {shown}"
        );
    }
}
