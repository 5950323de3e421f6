//! Phase one: the file as written. Every table refuses unknown keys; values
//! stay as text where phase two (validate.rs) must explain what is wrong.

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::fmt;

/// Where a secret comes from. A literal is recorded without its value so
/// that no error message can ever repeat it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawSecret {
    Env(String),
    File(String),
    Literal,
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSecret;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("{ env = \"VARIABLE\" } or { file = \"/path\" }")
            }
            fn visit_str<E: de::Error>(self, _v: &str) -> Result<RawSecret, E> {
                Ok(RawSecret::Literal)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSecret, A::Error> {
                let mut found: Option<RawSecret> = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value: String = map.next_value()?;
                    let this = match key.as_str() {
                        "env" => RawSecret::Env(value),
                        "file" => RawSecret::File(value),
                        other => return Err(de::Error::unknown_field(other, &["env", "file"])),
                    };
                    if found.is_some() {
                        return Err(de::Error::custom("give exactly one of `env` or `file`"));
                    }
                    found = Some(this);
                }
                found.ok_or_else(|| de::Error::custom("give exactly one of `env` or `file`"))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKcr {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub access_key_id: Option<RawAccessKeyId>,
    pub secret_access_key: Option<RawSecret>,
    pub timezone: Option<String>,
    pub requests_per_second: Option<f64>,
    pub max_in_flight: Option<i64>,
    pub timeout: Option<String>,
    pub max_consecutive_failures: Option<i64>,
}

/// The access key id is an identifier sent in clear in every request, so a
/// literal is allowed; a reference works too.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawAccessKeyId {
    Literal(String),
    Reference(RawSecret),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInstance {
    pub id: String,
    pub name: String,
    pub registry: Option<String>,
    pub scope: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub admin_token: Option<RawSecret>,
    pub max_connections: Option<i64>,
    pub header_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub path: Option<String>,
    pub url: Option<RawSecret>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScheduler {
    pub timezone: Option<String>,
    pub jitter: Option<String>,
    pub run_on_start: Option<bool>,
    pub shutdown_timeout: Option<String>,
    pub job_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLeader {
    pub renew: Option<String>,
    pub lease: Option<String>,
    pub id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<super::LogFormat>,
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    pub max_age: Option<String>,
}
