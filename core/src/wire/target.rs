//! A code's target: the URL a resolution answers with. One rule for every
//! way a target arrives (the admin API, bulk import, a peer CMP's answer).

/// Longest accepted target URL, in bytes.
pub const MAX_TARGET_LEN: usize = 2048;

/// Whether `target` may be a code's target: an `http(s)` URL of at most
/// [`MAX_TARGET_LEN`] bytes with something after the scheme, and no
/// whitespace or control character (it goes into a `Location` header).
pub fn valid_target(target: &str) -> bool {
    (target.starts_with("https://") || target.starts_with("http://"))
        && target.len() <= MAX_TARGET_LEN
        && target.len() > "https://".len()
        && !target.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_the_right_shape_only() {
        assert!(valid_target("https://example.org/"));
        assert!(valid_target("http://example.org/a?b=c"));
        let longest = format!("https://{}", "a".repeat(MAX_TARGET_LEN - 8));
        assert!(valid_target(&longest));
        assert!(!valid_target(&format!("{longest}a")));
        for bad in [
            "",
            "https://",
            "ftp://example.org/",
            "https://exa mple.org/",
            "https://example.org/\n",
            "javascript:alert(1)",
        ] {
            assert!(!valid_target(bad), "{bad:?}");
        }
    }
}
