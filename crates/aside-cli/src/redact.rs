//! Credentials out of everything the tool prints: the one place a URL is
//! made safe to show.
//!
//! Owns masking the secrets of URLs (`redis://admin:***@host`,
//! `postgres://app:***@db/app`, a `?password=` query pair) before they reach
//! stdout, stderr, a log line or an HTTP response. Every message of the tool
//! that names a server goes through [`url`] (or [`urls`] for a list); text
//! the tool did not write itself (another crate's error, logged) goes
//! through [`text`]. The masking rule is the library's
//! ([`aside::store::masked_url`]), so the library's errors and the tool's
//! messages mask alike.

use std::sync::LazyLock;

use regex::Regex;

/// `url` with its password (or a lone user part, which redis-rs takes as
/// the password) and any `password`, `pass` or `token` query value shown
/// as `***`. Text that does not parse as a URL keeps only its scheme.
pub fn url(raw: &str) -> String {
    // A libpq-style `host=db password=...` string is no URL, and any part
    // of it may be a secret.
    let key_value = raw.find('=').is_some_and(|eq| !raw[..eq].contains(':'));
    if !raw.contains("://") && key_value {
        return "***".to_owned();
    }
    aside::store::masked_url(raw)
}

/// A comma-separated list of URLs or addresses, each masked by [`url`].
pub fn urls(list: &str) -> String {
    list.split(',')
        .map(|item| url(item.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

/// A URL inside free text: a scheme, `://`, and the rest of the word (a
/// password may hold an unescaped `/`).
static URL_IN_TEXT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+").expect("a valid pattern"));

/// `text` with every URL in it that has a user-info part or a query
/// masked by [`url`] (other URLs are left as written): for error text from
/// other crates, which may quote the URL it was given.
pub fn text(text: &str) -> String {
    URL_IN_TEXT
        .replace_all(text, |found: &regex::Captures<'_>| {
            // The word may end in punctuation of the sentence around it
            // (`at redis://u:p@h:6379: refused`), which is no part of the URL.
            let word = &found[0];
            let bare = word.trim_end_matches([':', ';', ',', '.', ')', ']', '\'', '"']);
            // Only a user-info part or a query can hold a secret.
            if !bare.contains(['@', '?']) {
                return word.to_owned();
            }
            format!("{}{}", url(bare), &word[bare.len()..])
        })
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords_in_urls_lists_and_text() {
        assert_eq!(
            url("redis://admin:s3cr3t@127.0.0.1:6379/0"),
            "redis://admin:***@127.0.0.1:6379/0"
        );
        assert_eq!(url("postgres://app:pw@db:5432/app"), "postgres://app:***@db:5432/app");
        assert_eq!(
            url("postgres://db/app?password=pw&sslmode=require"),
            "postgres://db/app?password=***&sslmode=require"
        );
        assert_eq!(url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(url("127.0.0.1:11211"), "127.0.0.1:11211");
        assert_eq!(
            urls("redis://a:x@h1:1, redis://h2:2"),
            "redis://a:***@h1:1,redis://h2:2"
        );
        assert_eq!(
            text("cannot connect to mysql://root:pw@db/x: refused; see http://example.com/help"),
            "cannot connect to mysql://root:***@db/x: refused; see http://example.com/help"
        );
        // Punctuation after a URL stays outside it, and a masked URL keeps its host.
        assert_eq!(
            text("cannot connect to Redis at redis://admin:***@127.0.0.1:6379: Connection refused"),
            "cannot connect to Redis at redis://admin:***@127.0.0.1:6379: Connection refused"
        );
        assert_eq!(
            text("at redis://u:pw@h:1, redis://v:pw2@h:2."),
            "at redis://u:***@h:1, redis://v:***@h:2."
        );
        assert_eq!(url("host=db password=s3cr3t"), "***");
        assert_eq!(url("sqlite:/tmp/x.db?mode=ro"), "sqlite:/tmp/x.db?mode=ro");
        assert_eq!(
            text("error connecting to postgres://db/app?password=pw: refused"),
            "error connecting to postgres://db/app?password=***: refused"
        );
        for secret in ["redis://a:b/c@h", "redis://a:b#c@h"] {
            assert!(!url(secret).contains('b'), "{secret} -> {}", url(secret));
            assert!(!text(&format!("at {secret}: refused")).contains('b'), "{secret}");
        }
    }
}
