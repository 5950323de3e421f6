//! Tag and repository patterns: parsing and matching never panic, and a glob
//! without wildcards matches exactly itself.
#![no_main]

use kcr_housekeeper::pattern::Pattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, name) = text.split_once('\n').unwrap_or((text, text));
    let Ok(p) = Pattern::parse(pattern) else {
        return;
    };
    let matched = p.is_match(name);
    let _ = p.capture(name, "group");
    let literal =
        !pattern.starts_with("re:") && !pattern.contains(['*', '?', '[', ']', '\\', '{', '}']);
    if literal {
        assert!(
            p.is_match(pattern),
            "a literal glob must match itself: {pattern:?}"
        );
        assert_eq!(
            matched,
            name == pattern,
            "a literal glob matches only itself"
        );
    }
});
