//! The token planner: a managed token's journal + the tokens the registry
//! lists + `now` → what to do now and what comes later. Pure: no I/O, no
//! clock. DESIGN §6 (tokens).
//!
//! A rotation moves through [`Step`]s, each journaled before it is taken:
//! `creating → created → delivering → delivered → verified → current →
//! superseded → disabled → deleted`, or `abandoned` when it failed. The secret
//! lives only in memory during one cycle, so a rotation found between
//! `created` and `verified` belonged to a process that died: its token is
//! discarded, but only once nothing can depend on it (before delivery began:
//! at once; after: when a newer rotation has been delivered to every sink).

use crate::config::ManagedToken;
use crate::state::RotationRecord;
use chrono::{DateTime, Duration as ChronoDuration, Utc};

/// Every managed token's `Desc` starts with this.
pub const DESC_PREFIX: &str = "kcr-housekeeper/";

pub fn desc(name: &str, rotation_id: &str) -> String {
    format!("{DESC_PREFIX}{name}/{rotation_id}")
}

/// `(name, rotation id)` of a managed token's `Desc`.
pub fn parse_desc(desc: &str) -> Option<(&str, &str)> {
    let (name, rid) = desc.strip_prefix(DESC_PREFIX)?.split_once('/')?;
    (!name.is_empty() && !rid.is_empty() && !rid.contains('/')).then_some((name, rid))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Journaled before CreateInstanceToken: the outcome may be unknown.
    Creating,
    /// The token exists; its secret is in this process's memory only.
    Created,
    /// Sinks are being written: some may hold the new secret.
    Delivering,
    /// Every sink holds the new secret.
    Delivered,
    /// A registry login with the new token succeeded (or `verify = false`).
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
    pub const ALL: [Step; 10] = [
        Step::Creating,
        Step::Created,
        Step::Delivering,
        Step::Delivered,
        Step::Verified,
        Step::Current,
        Step::Superseded,
        Step::Disabled,
        Step::Deleted,
        Step::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Creating => "creating",
            Step::Created => "created",
            Step::Delivering => "delivering",
            Step::Delivered => "delivered",
            Step::Verified => "verified",
            Step::Current => "current",
            Step::Superseded => "superseded",
            Step::Disabled => "disabled",
            Step::Deleted => "deleted",
            Step::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A token as DescribeInstanceToken lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub token_id: String,
    pub enabled: bool,
    pub desc: Option<String>,
    /// `None`: never expires.
    pub expires_at: Option<DateTime<Utc>>,
}

/// One thing to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Planned {
    /// A creation with an unknown outcome, not listed yet: wait (no new rotation meanwhile).
    AwaitListing {
        rotation_id: String,
        until: DateTime<Utc>,
    },
    /// A token whose secret is lost and that nothing depends on: disable and
    /// delete it (`None`: it was never created; just close the rotation).
    Discard {
        rotation_id: String,
        token_id: Option<String>,
        enabled: bool,
        why: String,
    },
    /// A rotation that reached `verified` before its process stopped: finish it.
    MarkCurrent {
        rotation_id: String,
    },
    Rotate {
        reason: String,
    },
    /// A token carrying this name's `Desc` from an earlier installation (not
    /// in this journal): retire it like a superseded one, from now.
    Adopt {
        rotation_id: String,
        token_id: String,
    },
    Disable {
        rotation_id: String,
        token_id: String,
    },
    Delete {
        rotation_id: String,
        token_id: String,
    },
    /// A retiring token that is no longer listed: nothing left to do.
    Forget {
        rotation_id: String,
        token_id: String,
    },
}

impl Planned {
    /// One line for `plan tokens` and logs.
    pub fn describe(&self) -> String {
        match self {
            Planned::AwaitListing { rotation_id, until } => format!(
                "wait: rotation {rotation_id} may have created a token not listed yet (until {})",
                until.to_rfc3339()
            ),
            Planned::Discard {
                rotation_id,
                token_id: Some(id),
                why,
                ..
            } => format!("discard token {id} of rotation {rotation_id}: {why}"),
            Planned::Discard {
                rotation_id, why, ..
            } => format!("close rotation {rotation_id}: {why}"),
            Planned::MarkCurrent { rotation_id } => {
                format!("finish rotation {rotation_id}: mark its verified token current")
            }
            Planned::Rotate { reason } => format!("rotate: {reason}"),
            Planned::Adopt {
                rotation_id,
                token_id,
            } => format!(
                "adopt token {token_id} (rotation {rotation_id}, not in this journal) for retirement"
            ),
            Planned::Disable { token_id, .. } => format!("disable token {token_id}"),
            Planned::Delete { token_id, .. } => format!("delete token {token_id}"),
            Planned::Forget { token_id, .. } => {
                format!("forget token {token_id}: no longer listed")
            }
        }
    }
}

/// Something that will happen later without anything changing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upcoming {
    pub at: DateTime<Utc>,
    pub what: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    pub rotation_id: String,
    pub token_id: String,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenPlan {
    pub name: String,
    pub instance: String,
    /// The last delivered and verified token, if it is still usable.
    pub current: Option<Current>,
    /// In order: discards, resume, rotation, adoption, retirement.
    pub steps: Vec<Planned>,
    pub upcoming: Vec<Upcoming>,
}

/// A journal record with its step parsed; unknown steps are skipped (a newer
/// version wrote them) and reported by the caller.
fn step_of(r: &RotationRecord) -> Option<Step> {
    Step::parse(&r.step)
}

fn std_to_chrono(d: std::time::Duration) -> ChronoDuration {
    ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX)
}

/// Plan one managed token. `journal` is this token's journal, `listed` every
/// token of its instance; a token younger than `list_lag` may be missing from
/// the listing and is assumed to exist.
pub fn plan_token(
    cfg: &ManagedToken,
    journal: &[RotationRecord],
    listed: &[Listed],
    list_lag: std::time::Duration,
    now: DateTime<Utc>,
) -> TokenPlan {
    let lag = std_to_chrono(list_lag);
    let mut steps = Vec::new();
    let mut upcoming = Vec::new();
    let by_id = |id: &str| listed.iter().find(|t| t.token_id == id);
    let by_rid = |rid: &str| {
        listed.iter().find(|t| {
            t.desc
                .as_deref()
                .and_then(parse_desc)
                .is_some_and(|(n, r)| n == cfg.name && r == rid)
        })
    };
    // Listed, or too young to be listed yet.
    let exists = |r: &RotationRecord, id: &str| by_id(id).is_some() || now < r.created_at + lag;

    // The current token: the newest `current` record whose token is usable.
    let current_rec = journal
        .iter()
        .filter(|r| step_of(r) == Some(Step::Current))
        .max_by_key(|r| (r.updated_at, r.created_at));
    let mut rotate_reason: Option<String> = None;
    let current = current_rec.and_then(|r| {
        let id = r.token_id.clone()?;
        let usable = match by_id(&id) {
            Some(t) if !t.enabled => {
                rotate_reason = Some(format!(
                    "current token {id} was disabled outside kcr-housekeeper"
                ));
                false
            }
            Some(t) if t.expires_at.is_some_and(|e| e <= now) => {
                rotate_reason = Some(format!("current token {id} has expired"));
                false
            }
            Some(_) => true,
            None if now < r.created_at + lag => true,
            None => {
                rotate_reason = Some(format!("current token {id} no longer exists"));
                false
            }
        };
        usable.then(|| Current {
            rotation_id: r.rotation_id.clone(),
            token_id: id.clone(),
            expires_at: by_id(&id).map_or(r.expires_at, |t| t.expires_at),
        })
    });
    let current_created = current_rec
        .filter(|_| current.is_some())
        .map(|r| r.created_at);

    // Interrupted rotations.
    let mut in_flight = false;
    let mut interrupted_after_delivery = false;
    for r in journal {
        let Some(step) = step_of(r) else { continue };
        let rid = r.rotation_id.clone();
        match step {
            Step::Creating => match by_rid(&r.rotation_id) {
                Some(t) => steps.push(Planned::Discard {
                    rotation_id: rid,
                    token_id: Some(t.token_id.clone()),
                    enabled: t.enabled,
                    why:
                        "created by a rotation that stopped before recording it; its secret is lost"
                            .into(),
                }),
                None if now < r.created_at + lag => {
                    in_flight = true;
                    steps.push(Planned::AwaitListing {
                        rotation_id: rid,
                        until: r.created_at + lag,
                    });
                }
                None => steps.push(Planned::Discard {
                    rotation_id: rid,
                    token_id: None,
                    enabled: false,
                    why: "its CreateInstanceToken never took effect".into(),
                }),
            },
            Step::Created => match r.token_id.as_deref().and_then(by_id) {
                Some(t) => steps.push(Planned::Discard {
                    rotation_id: rid,
                    token_id: Some(t.token_id.clone()),
                    enabled: t.enabled,
                    why: "created but never delivered; its secret is lost".into(),
                }),
                None => steps.push(Planned::Discard {
                    rotation_id: rid,
                    token_id: None,
                    enabled: false,
                    why: "its token is gone".into(),
                }),
            },
            Step::Delivering | Step::Delivered => {
                // Some sinks may hold this token: keep it until a newer rotation reached every sink.
                let superseded = current_created.is_some_and(|c| c > r.created_at);
                if superseded {
                    let t = r.token_id.as_deref().and_then(by_id);
                    steps.push(Planned::Discard {
                        rotation_id: rid,
                        token_id: t.map(|t| t.token_id.clone()),
                        enabled: t.is_some_and(|t| t.enabled),
                        why: "its delivery was interrupted and a newer rotation replaced it everywhere"
                            .into(),
                    });
                } else {
                    interrupted_after_delivery = true;
                }
            }
            Step::Verified => {
                if r.token_id.as_deref().is_some_and(|id| exists(r, id)) {
                    steps.push(Planned::MarkCurrent { rotation_id: rid });
                    in_flight = true;
                } else {
                    steps.push(Planned::Discard {
                        rotation_id: rid,
                        token_id: None,
                        enabled: false,
                        why: "its token is gone".into(),
                    });
                }
            }
            Step::Abandoned => {
                // A creation given up on may still surface in the listing later.
                if let Some(t) = by_rid(&r.rotation_id) {
                    steps.push(Planned::Discard {
                        rotation_id: rid,
                        token_id: Some(t.token_id.clone()),
                        enabled: t.enabled,
                        why: "appeared after its rotation was given up; its secret is lost".into(),
                    });
                }
            }
            _ => {}
        }
    }

    // Rotation.
    if !in_flight {
        let reason = match (&current, rotate_reason) {
            (None, Some(why)) => Some(why),
            (None, None) => Some("no delivered token yet".to_string()),
            (Some(_), _) if interrupted_after_delivery => {
                Some("an interrupted rotation left sinks with an unconfirmed token".to_string())
            }
            (Some(c), _) => {
                let before = std_to_chrono(cfg.rotate_before);
                match c.expires_at {
                    Some(e) if e - before <= now => Some(format!(
                        "token {} expires at {}, within rotate_before {}",
                        c.token_id,
                        e.to_rfc3339(),
                        crate::duration::format(cfg.rotate_before)
                    )),
                    Some(e) => {
                        upcoming.push(Upcoming {
                            at: e - before,
                            what: format!(
                                "rotate (token {} expires at {})",
                                c.token_id,
                                e.to_rfc3339()
                            ),
                        });
                        None
                    }
                    None => None,
                }
            }
        };
        if let Some(reason) = reason {
            steps.push(Planned::Rotate { reason });
        }
    }

    // Retirement: only while a usable current token exists, and never it.
    if let Some(c) = &current {
        let known: std::collections::HashSet<&str> =
            journal.iter().map(|r| r.rotation_id.as_str()).collect();
        let mut adopted = std::collections::HashSet::new();
        for t in listed {
            let Some((name, rid)) = t.desc.as_deref().and_then(parse_desc) else {
                continue;
            };
            if name != cfg.name || known.contains(rid) || t.token_id == c.token_id {
                continue;
            }
            let rotation_id = if adopted.insert(rid) {
                rid.to_string()
            } else {
                format!("{rid}@{}", t.token_id)
            };
            steps.push(Planned::Adopt {
                rotation_id,
                token_id: t.token_id.clone(),
            });
        }
        for r in journal {
            let step = step_of(r);
            let retiring = match step {
                Some(Step::Superseded) => true,
                // An older `current` left behind is superseded too.
                Some(Step::Current) => r.rotation_id != c.rotation_id,
                Some(Step::Disabled) => true,
                _ => false,
            };
            let Some(id) = r
                .token_id
                .clone()
                .filter(|id| retiring && *id != c.token_id)
            else {
                continue;
            };
            let rotation_id = r.rotation_id.clone();
            let Some(t) = by_id(&id) else {
                steps.push(Planned::Forget {
                    rotation_id,
                    token_id: id,
                });
                continue;
            };
            if step == Some(Step::Disabled) || !t.enabled {
                let since = if step == Some(Step::Disabled) {
                    r.updated_at
                } else {
                    now
                };
                let at = since + std_to_chrono(cfg.delete_after);
                if step == Some(Step::Disabled) && at <= now {
                    steps.push(Planned::Delete {
                        rotation_id,
                        token_id: id,
                    });
                } else if step != Some(Step::Disabled) {
                    // Disabled by someone else: record it, then count delete_after from now.
                    steps.push(Planned::Disable {
                        rotation_id,
                        token_id: id,
                    });
                } else {
                    upcoming.push(Upcoming {
                        at,
                        what: format!("delete token {id}"),
                    });
                }
            } else {
                let at = r.updated_at + std_to_chrono(cfg.overlap);
                if at <= now {
                    steps.push(Planned::Disable {
                        rotation_id,
                        token_id: id,
                    });
                } else {
                    upcoming.push(Upcoming {
                        at,
                        what: format!("disable token {id} (overlap ends)"),
                    });
                }
            }
        }
    }
    upcoming.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.what.cmp(&b.what)));
    TokenPlan {
        name: cfg.name.clone(),
        instance: cfg.instance.clone(),
        current,
        steps,
        upcoming,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const LAG: std::time::Duration = std::time::Duration::from_secs(120);

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
    }

    fn hours(h: i64) -> ChronoDuration {
        ChronoDuration::hours(h)
    }

    fn cfg() -> ManagedToken {
        ManagedToken {
            name: "ci-pull".into(),
            instance: "prod".into(),
            lifetime: crate::config::TokenLifetime::Days(30),
            rotate_before: std::time::Duration::from_secs(10 * 86_400),
            overlap: std::time::Duration::from_secs(24 * 3600),
            delete_after: std::time::Duration::from_secs(7 * 86_400),
            verify: true,
            sinks: Vec::new(),
        }
    }

    /// A journal record: rotation `rid` at `step`, created `age` ago, step reached `since` ago.
    fn rec(rid: &str, token: Option<&str>, step: Step, age: i64, since: i64) -> RotationRecord {
        RotationRecord {
            rotation_id: rid.into(),
            token_name: "ci-pull".into(),
            instance: "prod".into(),
            token_id: token.map(Into::into),
            previous_token_id: None,
            step: step.as_str().into(),
            expires_at: None,
            created_at: now() - hours(age),
            updated_at: now() - hours(since),
            error: None,
        }
    }

    /// A listed token of this managed name expiring in `expires_in` hours.
    fn listed(id: &str, rid: &str, enabled: bool, expires_in: i64) -> Listed {
        Listed {
            token_id: id.into(),
            enabled,
            desc: Some(desc("ci-pull", rid)),
            expires_at: Some(now() + hours(expires_in)),
        }
    }

    fn steps(journal: &[RotationRecord], tokens: &[Listed]) -> Vec<String> {
        plan_token(&cfg(), journal, tokens, LAG, now())
            .steps
            .iter()
            .map(|s| match s {
                Planned::AwaitListing { rotation_id, .. } => format!("await {rotation_id}"),
                Planned::Discard {
                    rotation_id,
                    token_id,
                    ..
                } => format!(
                    "discard {rotation_id} {}",
                    token_id.as_deref().unwrap_or("-")
                ),
                Planned::MarkCurrent { rotation_id } => format!("mark-current {rotation_id}"),
                Planned::Rotate { .. } => "rotate".into(),
                Planned::Adopt { token_id, .. } => format!("adopt {token_id}"),
                Planned::Disable { token_id, .. } => format!("disable {token_id}"),
                Planned::Delete { token_id, .. } => format!("delete {token_id}"),
                Planned::Forget { token_id, .. } => format!("forget {token_id}"),
            })
            .collect()
    }

    #[test]
    fn desc_round_trips_and_rejects_foreign_text() {
        assert_eq!(parse_desc(&desc("ci-pull", "r1")), Some(("ci-pull", "r1")));
        assert_eq!(parse_desc("kcr-housekeeper/ci-pull/"), None);
        assert_eq!(parse_desc("kcr-housekeeper/a/b/c"), None);
        assert_eq!(parse_desc("ci token"), None);
        for s in Step::ALL {
            assert_eq!(Step::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn table() {
        let cur = |expires_in| {
            (
                rec("r1", Some("t1"), Step::Current, 500, 500),
                listed("t1", "r1", true, expires_in),
            )
        };
        let (c_fresh, t_fresh) = cur(20 * 24);
        let (c_old, t_old) = cur(5 * 24);
        type Case = (
            &'static str,
            Vec<RotationRecord>,
            Vec<Listed>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            ("nothing yet: rotate", vec![], vec![], vec!["rotate"]),
            (
                "fresh current: nothing",
                vec![c_fresh.clone()],
                vec![t_fresh.clone()],
                vec![],
            ),
            (
                "inside rotate_before: rotate",
                vec![c_old.clone()],
                vec![t_old.clone()],
                vec!["rotate"],
            ),
            (
                "current disabled outside: rotate",
                vec![c_fresh.clone()],
                vec![listed("t1", "r1", false, 20 * 24)],
                vec!["rotate"],
            ),
            (
                "current gone: rotate",
                vec![c_fresh.clone()],
                vec![],
                vec!["rotate"],
            ),
            (
                "current just created, not listed yet: nothing",
                vec![rec("r1", Some("t1"), Step::Current, 0, 0)],
                vec![],
                vec![],
            ),
            (
                "ambiguous create, listed: discard it and rotate",
                vec![c_old.clone(), rec("r2", None, Step::Creating, 0, 0)],
                vec![t_old.clone(), listed("t2", "r2", true, 720)],
                vec!["discard r2 t2", "rotate"],
            ),
            (
                "ambiguous create, not listed yet: wait, no second rotation",
                vec![c_old.clone(), rec("r2", None, Step::Creating, 0, 0)],
                vec![t_old.clone()],
                vec!["await r2"],
            ),
            (
                "ambiguous create, never listed after the lag: close it and rotate",
                vec![c_old.clone(), rec("r2", None, Step::Creating, 1, 1)],
                vec![t_old.clone()],
                vec!["discard r2 -", "rotate"],
            ),
            (
                "an abandoned creation that surfaced late: discard it",
                vec![c_fresh.clone(), rec("r2", None, Step::Abandoned, 3, 1)],
                vec![t_fresh.clone(), listed("t2", "r2", true, 720)],
                vec!["discard r2 t2"],
            ),
            (
                "created, never delivered: discard at once",
                vec![c_fresh.clone(), rec("r2", Some("t2"), Step::Created, 1, 1)],
                vec![t_fresh.clone(), listed("t2", "r2", true, 720)],
                vec!["discard r2 t2"],
            ),
            (
                "delivery interrupted: rotate, keep it until replaced",
                vec![
                    c_fresh.clone(),
                    rec("r2", Some("t2"), Step::Delivering, 1, 1),
                ],
                vec![t_fresh.clone(), listed("t2", "r2", true, 720)],
                vec!["rotate"],
            ),
            (
                "delivery interrupted, newer rotation current: discard it",
                vec![
                    rec("r2", Some("t2"), Step::Delivering, 2, 2),
                    rec("r3", Some("t3"), Step::Current, 1, 1),
                ],
                vec![listed("t2", "r2", true, 720), listed("t3", "r3", true, 720)],
                vec!["discard r2 t2"],
            ),
            (
                "verified before a crash: finish it",
                vec![c_old.clone(), rec("r2", Some("t2"), Step::Verified, 1, 1)],
                vec![t_old.clone(), listed("t2", "r2", true, 720)],
                vec!["mark-current r2"],
            ),
            (
                "superseded inside overlap: nothing yet",
                vec![
                    rec("r0", Some("t0"), Step::Superseded, 900, 2),
                    c_fresh.clone(),
                ],
                vec![listed("t0", "r0", true, 100), t_fresh.clone()],
                vec![],
            ),
            (
                "superseded past overlap: disable",
                vec![
                    rec("r0", Some("t0"), Step::Superseded, 900, 25),
                    c_fresh.clone(),
                ],
                vec![listed("t0", "r0", true, 100), t_fresh.clone()],
                vec!["disable t0"],
            ),
            (
                "disabled inside delete_after: nothing yet",
                vec![
                    rec("r0", Some("t0"), Step::Disabled, 900, 24),
                    c_fresh.clone(),
                ],
                vec![listed("t0", "r0", false, 100), t_fresh.clone()],
                vec![],
            ),
            (
                "disabled past delete_after: delete",
                vec![
                    rec("r0", Some("t0"), Step::Disabled, 900, 7 * 24 + 1),
                    c_fresh.clone(),
                ],
                vec![listed("t0", "r0", false, 100), t_fresh.clone()],
                vec!["delete t0"],
            ),
            (
                "retiring token gone: forget",
                vec![
                    rec("r0", Some("t0"), Step::Superseded, 900, 25),
                    c_fresh.clone(),
                ],
                vec![t_fresh.clone()],
                vec!["forget t0"],
            ),
            (
                "no usable current: never retire the previous token",
                vec![
                    rec("r0", Some("t0"), Step::Superseded, 900, 25),
                    c_fresh.clone(),
                ],
                vec![listed("t0", "r0", true, 100)],
                vec!["rotate"],
            ),
            (
                "a token of this name from an earlier installation: adopt it",
                vec![c_fresh.clone()],
                vec![t_fresh.clone(), listed("tx", "r-seed", true, 100)],
                vec!["adopt tx"],
            ),
            (
                "an earlier installation's token before any rotation: leave it, rotate",
                vec![],
                vec![listed("tx", "r-seed", true, 100)],
                vec!["rotate"],
            ),
            (
                "other names and unmanaged tokens are never touched",
                vec![c_fresh.clone()],
                vec![
                    t_fresh.clone(),
                    Listed {
                        token_id: "u1".into(),
                        enabled: true,
                        desc: Some(desc("other", "r9")),
                        expires_at: None,
                    },
                    Listed {
                        token_id: "u2".into(),
                        enabled: true,
                        desc: None,
                        expires_at: Some(now() - hours(1)),
                    },
                ],
                vec![],
            ),
        ];
        for (name, journal, tokens, want) in cases {
            assert_eq!(steps(&journal, &tokens), want, "case: {name}");
        }
    }

    #[test]
    fn the_current_token_is_never_disabled_or_deleted() {
        // Two `current` records (a crash between the two writes cannot leave this, but a bug might):
        // only the older is retired, never the newest.
        let journal = vec![
            rec("r1", Some("t1"), Step::Current, 900, 100),
            rec("r2", Some("t2"), Step::Current, 50, 50),
        ];
        let tokens = vec![listed("t1", "r1", true, 100), listed("t2", "r2", true, 700)];
        assert_eq!(steps(&journal, &tokens), vec!["disable t1"]);
        let p = plan_token(&cfg(), &journal, &tokens, LAG, now());
        assert_eq!(p.current.unwrap().token_id, "t2");
    }

    #[test]
    fn upcoming_events_say_when() {
        let journal = vec![
            rec("r0", Some("t0"), Step::Superseded, 900, 2),
            rec("r1", Some("t1"), Step::Current, 500, 2),
        ];
        let tokens = vec![
            listed("t0", "r0", true, 100),
            listed("t1", "r1", true, 20 * 24),
        ];
        let p = plan_token(&cfg(), &journal, &tokens, LAG, now());
        let when: Vec<(i64, &str)> = p
            .upcoming
            .iter()
            .map(|u| ((u.at - now()).num_hours(), u.what.as_str()))
            .collect();
        assert_eq!(when[0], (22, "disable token t0 (overlap ends)"));
        assert_eq!(when[1].0, 10 * 24);
        assert!(when[1].1.starts_with("rotate"));
    }
}
