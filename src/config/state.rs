//! `[state]`: where the state lives — a SQLite file (`path`, the default)
//! or a PostgreSQL database (`url`, a secret: `{ env = … }` or
//! `{ file = … }`, never written in the config, never logged).

use super::raw::RawState;
use super::validate::Validator;
use super::{KeyPath, StateConfig};
use secrecy::SecretString;
use std::path::PathBuf;

/// The SQLite file when `[state]` names none.
pub const DEFAULT_STATE_PATH: &str = "/var/lib/kcr-housekeeper/state.db";

impl Validator<'_> {
    pub(super) fn state(&mut self, value: Option<toml::Value>) -> Option<StateConfig> {
        let p = KeyPath::root().key("state");
        let raw: RawState = self.section("state", value)?;
        match (raw.path, raw.url) {
            (Some(_), Some(_)) => {
                self.err(
                    p.key("url"),
                    "give either `path` (SQLite) or `url` (PostgreSQL), not both",
                );
                None
            }
            (None, Some(url)) => {
                let url = self.secret_always(p.key("url"), &url)?;
                // The URL is never repeated in a message: it may hold a password.
                let scheme_ok = url.starts_with("postgresql://") || url.starts_with("postgres://");
                if !scheme_ok || url.parse::<tokio_postgres::Config>().is_err() {
                    self.err(
                        p.key("url"),
                        "not a valid PostgreSQL URL (expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE, optionally ?sslmode=disable|prefer|require)",
                    );
                    return None;
                }
                Some(StateConfig::Postgres {
                    url: SecretString::from(url),
                })
            }
            (path, None) => {
                let path = path.unwrap_or_else(|| DEFAULT_STATE_PATH.into());
                if path.is_empty() {
                    self.err(p.key("path"), "empty path");
                }
                Some(StateConfig::Sqlite {
                    path: PathBuf::from(path),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{StateConfig, parse};
    use std::path::Path;

    const BASE: &str = r#"
[kcr]
region = "cn-beijing-6"
access_key_id = "AKLT"
secret_access_key = { env = "SK" }

[[instances]]
id = "eb1d0d73-4845-4283-a736-000000000000"
name = "prod"
"#;

    fn env(name: &str) -> Option<String> {
        match name {
            "SK" => Some("secret".into()),
            "DB" => {
                Some("postgresql://kcr:hunter2pass@db.internal:5432/kcr?sslmode=require".into())
            }
            "BAD" => Some("mysql://kcr:hunter2pass@db/kcr".into()),
            _ => None,
        }
    }

    fn load(state: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        parse(&format!("{BASE}{state}"), "c.toml", Path::new("."), &env)
    }

    #[test]
    fn a_url_from_the_environment_selects_postgresql_and_stays_secret() {
        let c = load("[state]\nurl = { env = \"DB\" }\n").unwrap();
        assert!(matches!(c.state, StateConfig::Postgres { .. }));
        assert_eq!(c.state.sqlite_path(), None);
        let debug = format!("{:?}", c.state);
        assert!(!debug.contains("hunter2pass"), "{debug}");
        assert!(!format!("{c:?}").contains("hunter2pass"));
    }

    #[test]
    fn path_is_the_default_and_sqlite() {
        let c = load("").unwrap();
        assert_eq!(
            c.state.sqlite_path(),
            Some(Path::new("/var/lib/kcr-housekeeper/state.db"))
        );
        let c = load("[state]\npath = \"/tmp/s.db\"\n").unwrap();
        assert_eq!(c.state.sqlite_path(), Some(Path::new("/tmp/s.db")));
    }

    #[test]
    fn both_a_literal_a_bad_url_and_a_missing_variable_are_refused_by_line_and_key() {
        let e = load("[state]\npath = \"/tmp/s.db\"\nurl = { env = \"DB\" }\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("c.toml:12:") && text.contains("state.url: give either `path`"),
            "{text}"
        );
        let e = load("[state]\nurl = \"postgresql://kcr:hunter2pass@db/kcr\"\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("state.url: literal secrets are refused"),
            "{text}"
        );
        assert!(!text.contains("hunter2pass"), "{text}");
        let e = load("[state]\nurl = { env = \"BAD\" }\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("state.url: not a valid PostgreSQL URL"),
            "{text}"
        );
        assert!(!text.contains("hunter2pass"), "{text}");
        let e = load("[state]\nurl = { env = \"NOPE\" }\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("state.url: environment variable NOPE is not set"),
            "{e}"
        );
    }
}
