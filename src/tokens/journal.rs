//! The rotation journal's record: one rotation of a managed token, written
//! before each step is taken ([`super::rotate`]) and read by the planner.
//! Stored by [`crate::state`] (`state/journal.rs`); a step this build does
//! not know (a damaged row, or a newer version's) is an error on reading,
//! never a skipped record.

use chrono::{DateTime, Utc};

/// The step a rotation reached; stored as its snake_case name.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum Step {
    /// Journaled before CreateInstanceToken: the outcome may be unknown.
    Creating,
    /// The token exists; its secret is in this process's memory only.
    Created,
    /// Sinks are being written: some may hold the new secret.
    Delivering,
    /// Written by versions before Step 7 (delivered, not yet verified):
    /// treated like `delivering`.
    Delivered,
    /// Verified by a registry login (or `verify = false`) and delivered to every sink.
    Verified,
    /// The token sinks hold and consumers use.
    Current,
    /// A newer rotation is current; this one stays enabled for `overlap`.
    Superseded,
    /// Disabled after `overlap`; deleted after `delete_after`.
    Disabled,
    Deleted,
    /// Failed or discarded; its token (if any) was disabled and deleted.
    Abandoned,
}

impl Step {
    pub const ALL: &[Step] = <Step as strum::VariantArray>::VARIANTS;

    /// The step named `s`; `None` for a name this build does not know.
    pub fn parse(s: &str) -> Option<Step> {
        s.parse().ok()
    }
}

crate::state::text_column!(Step);

/// One rotation of a managed token, as journaled before each step. Never
/// holds the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationRecord {
    pub rotation_id: String,
    pub token_name: String,
    pub instance: String,
    pub token_id: Option<String>,
    pub previous_token_id: Option<String>,
    /// The step reached.
    pub step: Step,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// When the step was reached.
    pub updated_at: DateTime<Utc>,
    pub error: Option<String>,
    /// When its token was first missing from a listing (cleared once listed):
    /// a token is forgotten only after two listings `list_lag` apart missed it.
    pub absent_since: Option<DateTime<Utc>>,
}

/// Which delivery group's sinks received a rotation's token (Step 10: the
/// replicas of one state deliver to their own sinks, and only the replica
/// that created a token ever knows its secret). Written in the transaction
/// that journals `delivering` (from then on those sinks may hold it) and
/// completed in the one that journals `verified`. Never holds the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub rotation_id: String,
    pub token_name: String,
    /// `[tokens] delivery_group` of the replica that delivered it.
    pub group: String,
    pub token_id: String,
    /// When the group's sinks began receiving it: from then on they may hold it.
    pub began_at: DateTime<Utc>,
    /// When every sink of the group held it; `None` while (or if never) done.
    pub delivered_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_stored_by_name_and_unknown_names_refused() {
        assert_eq!(Step::ALL.len(), 10);
        for &s in Step::ALL {
            assert_eq!(Step::parse(s.as_str()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(Step::Delivering.as_str(), "delivering");
        assert_eq!(Step::parse("retired"), None);
        assert!("Current".parse::<Step>().is_err(), "names are exact");
    }
}
