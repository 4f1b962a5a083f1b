//! POSIX shell quoting: the only place nixgate turns a word into shell text.

/// Characters that never need quoting in a POSIX shell word.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'_' | b'-' | b'.' | b'/' | b':' | b'@' | b'%' | b'+' | b',' | b'='
        )
}

/// Quote one word so that a POSIX shell reads it back byte for byte.
///
/// Plain words (store paths, flags) stay readable; anything else is wrapped in
/// single quotes, with embedded single quotes written as `'\''`. A word that
/// starts with `=` or `~` is quoted too, so no shell expands it.
pub fn quote(word: &str) -> String {
    let bytes = word.as_bytes();
    if !bytes.is_empty() && bytes.iter().all(|b| is_plain(*b)) && bytes[0] != b'=' {
        return word.to_owned();
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for ch in word.chars() {
        if ch == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(ch);
        }
    }
    out.push('\'');
    out
}

/// Quote every word and join them with spaces.
pub fn join<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_words_stay_plain() {
        assert_eq!(quote("/nix/store/abc-foo-1.0"), "/nix/store/abc-foo-1.0");
        assert_eq!(quote("--set"), "--set");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(quote("~root"), "'~root'");
        assert_eq!(quote("=x"), "'=x'");
    }

    fn sh_echo_args(words: &[String]) -> Vec<String> {
        // printf '%s\0' prints each argument NUL-terminated, so the round trip
        // is exact even for newlines and spaces.
        let script = format!("printf '%s\\0' {}", join(words));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "sh failed on {script:?}");
        let mut parts: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .map(|p| String::from_utf8(p.to_vec()).expect("utf8 back"))
            .collect();
        parts.pop(); // after the last NUL
        parts
    }

    #[test]
    fn hostile_words_round_trip() {
        let words: Vec<String> = [
            "", " ", "'", "\"", "\\", "$HOME", "`id`", "a\nb", "*", "?", "[a]", "~", "#x", ";",
            "&&", "|", "!", "{a,b}", "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(sh_echo_args(&words), words);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn quoting_round_trips_through_sh(words in proptest::collection::vec("[^\u{0}]{0,12}", 1..6)) {
            prop_assert_eq!(sh_echo_args(&words), words);
        }
    }
}
