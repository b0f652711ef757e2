//! A small glob matcher for key names and identities: `*` matches any run of characters (also
//! none), `?` exactly one character, everything else itself. No character classes, no escapes,
//! and none needed: neither key names nor identities can contain `*` or `?` (the TLS layer
//! refuses such identities, [`crate::tls::check_identity`]), so a pattern holding one is always
//! a glob, and a pattern without one is a single name, compared for equality.

use std::fmt;

/// The wildcard characters: `*` (any run of characters) and `?` (one character).
pub const WILDCARDS: [char; 2] = ['*', '?'];

/// A compiled pattern. Matching is linear in `pattern × text` at worst (no backtracking blow-up).
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Box<str>,
    /// True when the pattern holds no wildcard: matching is plain equality.
    literal: bool,
}

impl Glob {
    /// Compiles `pattern`. Every string is a valid pattern.
    pub fn new(pattern: &str) -> Glob {
        Glob {
            pattern: pattern.into(),
            literal: !pattern.contains(WILDCARDS),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        self.literal
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        if self.literal {
            return *self.pattern == *text;
        }
        matches(&self.pattern, text)
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.pattern)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// Iterative wildcard matching with one backtrack point (the last `*`). `?` matches one `char`
/// (not one byte), so non-ASCII identities behave as written; ASCII input (the usual case: key
/// names are ASCII) is matched on bytes without allocating.
fn matches(pattern: &str, text: &str) -> bool {
    if pattern.is_ascii() && text.is_ascii() {
        wildcard(pattern.as_bytes(), text.as_bytes(), b'*', b'?')
    } else {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        wildcard(&p, &t, '*', '?')
    }
}

fn wildcard<T: Copy + PartialEq>(pattern: &[T], text: &[T], star_sym: T, any_sym: T) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Position of the last `*` seen and the text position it is currently tried at.
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = text.get(t) {
        match pattern.get(p) {
            Some(&s) if s == star_sym => {
                star = Some((p, t));
                p += 1;
            }
            Some(&s) if s == any_sym || s == c => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and retry after it.
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == star_sym))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("", "", true),
            ("", "a", false),
            ("payments-*", "payments-", true),
            ("payments-*", "payments-eu", true),
            ("payments-*", "payment-eu", false),
            ("*-eu", "payments-eu", true),
            ("*-eu", "payments-us", false),
            ("k?", "k1", true),
            ("k?", "k", false),
            ("k?", "k12", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a*b*c", "acb", false),
            ("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
            ("spiffe://ex.org/*", "spiffe://ex.org/payments", true),
            ("spiffe://ex.org/*", "spiffe://ex.org.evil/x", false),
            ("é?", "éü", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("**", "x", true),
            ("?*?", "ab", true),
            ("?*?", "a", false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(
                Glob::new(pattern).matches(text),
                want,
                "{pattern:?} vs {text:?}"
            );
        }
        assert!(Glob::new("abc").is_literal());
        assert!(!Glob::new("a*").is_literal());
    }

    /// A reference matcher by recursion (exponential, fine for short inputs).
    fn reference(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            Some((&c, rest)) => {
                !t.is_empty() && (c == '?' || c == t[0]) && reference(rest, &t[1..])
            }
        }
    }

    proptest! {
        #[test]
        fn agrees_with_reference(p in "[ab*?]{0,8}", t in "[ab]{0,10}") {
            let pc: Vec<char> = p.chars().collect();
            let tc: Vec<char> = t.chars().collect();
            prop_assert_eq!(Glob::new(&p).matches(&t), reference(&pc, &tc));
        }

        #[test]
        fn literal_patterns_are_equality(s in "[a-z0-9.-]{0,12}", t in "[a-z0-9.-]{0,12}") {
            prop_assert_eq!(Glob::new(&s).matches(&t), s == t);
            prop_assert!(Glob::new(&s).matches(&s));
        }
    }
}
