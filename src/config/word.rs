//! Config values that are one of a few words (`mode = "dry-run"`): serde
//! enums whose error says what was expected, as the validator always has
//! (`unknown mode "yes"; expected "dry-run" or "enforce"`).

use serde::de::{self, Deserialize, Deserializer};
use std::str::FromStr;

/// A closed set of words (strum's `EnumString` + `VariantNames`), named
/// `WHAT` in errors.
pub trait Word: FromStr + strum::VariantNames {
    const WHAT: &'static str;
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
pub fn expected(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Read a word; anything else is refused naming the words expected.
pub fn deserialize<'de, T: Word, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        de::Error::custom(format!(
            "unknown {} {s:?}; expected {}",
            T::WHAT,
            expected(T::VARIANTS)
        ))
    })
}

/// `impl Word` and `Deserialize` for a strum enum: `word!(Mode, "mode");`.
macro_rules! word {
    ($t:ty, $what:literal) => {
        impl $crate::config::word::Word for $t {
            const WHAT: &'static str = $what;
        }
        impl<'de> ::serde::Deserialize<'de> for $t {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::config::word::deserialize(d)
            }
        }
    };
}
pub(crate) use word;

#[cfg(test)]
mod tests {
    use super::expected;

    #[test]
    fn expected_lists_read_as_english() {
        assert_eq!(expected(&["a"]), "\"a\"");
        assert_eq!(expected(&["a", "b"]), "\"a\" or \"b\"");
        assert_eq!(expected(&["a", "b", "c"]), "\"a\", \"b\" or \"c\"");
    }
}
