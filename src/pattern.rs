//! Name patterns used by rules: globs (`*` any run without `/`, `**` any run,
//! `?` one character other than `/`, `[…]` a class, `[!…]` a negated class)
//! or anchored regexes written `re:^…$`. Both match the whole name.
//!
//! Globs are translated to regexes here rather than with a glob crate because
//! DESIGN §6 fixes their meaning for names, not file paths (`**` may sit
//! anywhere, `?` never crosses `/`), and one engine keeps matching uniform.

use regex::Regex;
use std::fmt;

#[derive(Clone)]
pub struct Pattern {
    text: String,
    regex: Regex,
    is_regex: bool,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Pattern {}

impl Pattern {
    /// ```
    /// use kcr_housekeeper::pattern::Pattern;
    /// let p = Pattern::parse("team/*").unwrap();
    /// assert!(p.is_match("team/app") && !p.is_match("team/a/b"));
    /// let r = Pattern::parse("re:(?P<group>[a-z]+)-[0-9]+").unwrap();
    /// assert_eq!(r.capture("main-42", "group"), Some("main"));
    /// ```
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if let Some(re) = text.strip_prefix("re:") {
            // Validate the bare regex first: wrapped unchecked, `a)|(b` would
            // close the anchoring group early and match unanchored.
            let invalid =
                |e: regex::Error| format!("invalid regex {re:?}: {}", one_line(&e.to_string()));
            Regex::new(re).map_err(invalid)?;
            let regex = Regex::new(&format!("^(?:{re})$")).map_err(|_| {
                format!(
                    "invalid regex {re:?}: it cannot be anchored at both ends (a `(?x)` comment reaching its end?)"
                )
            })?;
            return Ok(Pattern {
                text: text.to_owned(),
                regex,
                is_regex: true,
            });
        }
        if text.is_empty() {
            return Err("empty pattern".into());
        }
        let regex =
            Regex::new(&glob_to_regex(text)?).map_err(|e| format!("invalid glob {text:?}: {e}"))?;
        Ok(Pattern {
            text: text.to_owned(),
            regex,
            is_regex: false,
        })
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }

    /// The value of a named capture group, for `group_by`.
    pub fn capture<'n>(&self, name: &'n str, group: &str) -> Option<&'n str> {
        self.regex.captures(name)?.name(group).map(|m| m.as_str())
    }

    pub fn has_group(&self, group: &str) -> bool {
        self.regex.capture_names().flatten().any(|n| n == group)
    }

    pub fn is_regex(&self) -> bool {
        self.is_regex
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn glob_to_regex(glob: &str) -> Result<String, String> {
    let mut out = String::from("^");
    let chars: Vec<char> = glob.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                out.push_str(".*");
                i += 2;
                continue;
            }
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            '[' => {
                let mut j = i + 1;
                let mut class = String::from("[");
                if matches!(chars.get(j), Some('!') | Some('^')) {
                    class.push('^');
                    j += 1;
                }
                // A `]` right after the opening is a literal member.
                if chars.get(j) == Some(&']') {
                    class.push_str("\\]");
                    j += 1;
                }
                while j < chars.len() && chars[j] != ']' {
                    let c = chars[j];
                    if matches!(c, '\\' | '[' | '&' | '~' | '^') {
                        class.push('\\');
                    }
                    class.push(c);
                    j += 1;
                }
                if j >= chars.len() {
                    return Err(format!("invalid glob {glob:?}: unclosed character class"));
                }
                class.push(']');
                if class == "[]" || class == "[^]" {
                    return Err(format!("invalid glob {glob:?}: empty character class"));
                }
                out.push_str(&class);
                i = j + 1;
                continue;
            }
            c => out.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    out.push('$');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Pattern::parse(p).unwrap().is_match(s)
    }

    #[test]
    fn glob_semantics() {
        assert!(m("*", "app"));
        assert!(!m("*", "team/app"), "* stops at /");
        assert!(m("**", "team/app"));
        assert!(m("team/**", "team/a/b"));
        assert!(m("**-cache", "team/x-cache"));
        assert!(m("pr-*", "pr-12"));
        assert!(!m("pr-*", "xpr-12"), "anchored at the start");
        assert!(!m("pr-*", "pr-12/x"));
        assert!(m("v?", "v1"));
        assert!(!m("v?", "v10"));
        assert!(!m("a?b", "a/b"));
        assert!(m("v*.*.*", "v1.2.3"));
        assert!(!m("v*.*.*", "v1-2-3"), "dots are literal");
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[!a-c]x", "bx"));
        assert!(m("[!a-c]x", "dx"));
        assert!(m("[]]", "]"));
        assert!(m("a+b", "a+b"), "regex metacharacters are literal");
        assert!(!m("a+b", "aab"));
    }

    #[test]
    fn regex_semantics() {
        assert!(m("re:pr-[0-9]+", "pr-12"));
        assert!(!m("re:pr-[0-9]+", "pr-12x"), "anchored at both ends");
        let p = Pattern::parse("re:^(?P<group>[a-z0-9-]+)-[0-9a-f]{7}$").unwrap();
        assert_eq!(
            p.capture("feature-login-1a2b3c4", "group"),
            Some("feature-login")
        );
        assert!(p.has_group("group") && !p.has_group("other"));
        assert!(p.is_regex());
    }

    #[test]
    fn a_regex_cannot_break_out_of_its_anchors() {
        // Issue 11 #22: wrapped unchecked, this was `^(?:pr-a)|(zzz)$`.
        let e = Pattern::parse("re:pr-a)|(zzz").unwrap_err();
        assert!(e.starts_with("invalid regex \"pr-a)|(zzz\""), "{e}");
        assert!(
            !e.contains("^(?:"),
            "the error shows the user's pattern: {e}"
        );
        for p in ["re:a|b", "re:(a)|(b)", "re:a$|^b"] {
            let p = Pattern::parse(p).unwrap();
            assert!(p.is_match("a") && p.is_match("b"), "{p}");
            assert!(
                !p.is_match("ab") && !p.is_match("xa") && !p.is_match("bx"),
                "{p}"
            );
        }
        let e = Pattern::parse("re:a(?x)#").unwrap_err();
        assert!(e.contains("anchored") && !e.contains("^(?:"), "{e}");
    }

    #[test]
    fn errors() {
        assert!(Pattern::parse("[abc").unwrap_err().contains("unclosed"));
        assert!(
            Pattern::parse("re:(")
                .unwrap_err()
                .contains("invalid regex")
        );
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("[!]").unwrap_err().contains("unclosed"));
    }
}
