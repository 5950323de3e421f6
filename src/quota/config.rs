//! `[quota]`: the section as written (`Raw*`, phase one: serde with
//! `deny_unknown_fields`), the checked `QuotaConfig`, and `validate` between
//! them (phase two). Errors go through the config's `Validator`, which
//! points each at file, line and key.

use crate::config::word::word;
use crate::config::{KeyPath, Validator};
use crate::schedule::Schedule;
use serde::Deserialize;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, strum::EnumString, strum::VariantNames, strum::IntoStaticStr,
)]
#[strum(serialize_all = "kebab-case")]
pub enum StorageGranularity {
    None,
    Namespace,
    Repository,
}
word!(StorageGranularity, "storage granularity");

#[derive(Clone, Debug)]
pub struct QuotaConfig {
    pub schedule: Schedule,
    pub storage: StorageGranularity,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    pub schedule: Option<String>,
    pub storage: Option<StorageGranularity>,
}

pub(crate) fn validate(v: &mut Validator, value: toml::Value) -> Option<QuotaConfig> {
    let p = KeyPath::root().key("quota");
    let raw: RawQuota = v.de(&p, value)?;
    let schedule = v.schedule(p.key("schedule"), raw.schedule.as_deref(), "0 */5 * * * *");
    let storage = raw.storage.unwrap_or(StorageGranularity::Namespace);
    Some(QuotaConfig {
        schedule: schedule?,
        storage,
    })
}
