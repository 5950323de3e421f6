//! The token planner: a managed token's journal + the tokens the registry
//! lists + `now` → what to do now and what comes later. Pure: no I/O, no
//! clock. DESIGN §6 (tokens).
//!
//! A rotation moves through [`Step`]s, each journaled before it is taken:
//! `creating → created → (login with the in-memory secret) → delivering →
//! verified (delivered to every sink) → current → superseded → disabled →
//! deleted`, or `abandoned` when it failed and its token was discarded. The
//! secret lives only in memory during one cycle, so a rotation found at
//! `created` belonged to a process that died before delivering: its token is
//! discarded at once. One found at `delivering` may sit in a sink that cannot
//! be undone (exec): it is kept and retired like a superseded token once a
//! newer rotation is current.
//!
//! The journal is keyed by (name, instance): records of another instance (the
//! token moved) are retired on that instance. Tokens of the same name from
//! another installation (another install id in `Desc`) are never touched.

pub use super::journal::{DeliveryRecord, RotationRecord, Step};
use crate::config::ManagedToken;
use crate::state::TokenBackoff;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use std::collections::{HashMap, HashSet};

/// Every managed token's `Desc` starts with this.
pub const DESC_PREFIX: &str = "kcr-housekeeper/";
/// The API's limit on `Desc`.
pub const DESC_MAX: usize = 256;
/// An installation id: 12 lowercase hex digits.
pub const INSTALL_ID_LEN: usize = 12;
/// A rotation id: `r20261122T120000Z-1a2b`.
pub const ROTATION_ID_LEN: usize = 22;

/// The length of a `Desc` for a name of `name_len` bytes.
pub const fn desc_len(name_len: usize) -> usize {
    DESC_PREFIX.len() + name_len + 1 + INSTALL_ID_LEN + 1 + ROTATION_ID_LEN
}

/// The longest managed token name whose `Desc` fits [`DESC_MAX`].
pub const MAX_NAME_LEN: usize = DESC_MAX - desc_len(0);

/// `kcr-housekeeper/<name>/<install-id>/<rotation-id>`.
pub fn desc(name: &str, install_id: &str, rotation_id: &str) -> String {
    format!("{DESC_PREFIX}{name}/{install_id}/{rotation_id}")
}

/// A managed token's `Desc`, parsed. `install_id` is `None` in the format
/// of versions before installation ids (`kcr-housekeeper/<name>/<rotation-id>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescParts<'a> {
    pub name: &'a str,
    pub install_id: Option<&'a str>,
    pub rotation_id: &'a str,
}

pub fn parse_desc(desc: &str) -> Option<DescParts<'_>> {
    let parts: Vec<&str> = desc.strip_prefix(DESC_PREFIX)?.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    match parts[..] {
        [name, rotation_id] => Some(DescParts {
            name,
            install_id: None,
            rotation_id,
        }),
        [name, install_id, rotation_id] => Some(DescParts {
            name,
            install_id: Some(install_id),
            rotation_id,
        }),
        _ => None,
    }
}

/// A token as DescribeInstanceToken lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub token_id: String,
    pub enabled: bool,
    pub desc: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
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
    /// A token whose secret is lost and that no sink received: disable and
    /// delete it (`None`: it was never created or is gone; just close the rotation).
    Discard {
        rotation_id: String,
        instance: String,
        token_id: Option<String>,
        enabled: bool,
        why: String,
    },
    /// A rotation that was verified and delivered before its process stopped: finish it.
    MarkCurrent {
        rotation_id: String,
    },
    Rotate {
        reason: String,
    },
    /// A token carrying this name's `Desc` in the format before installation
    /// ids, older than the current token and not in this journal: retire it
    /// like a superseded one, from now.
    Adopt {
        rotation_id: String,
        token_id: String,
    },
    Disable {
        rotation_id: String,
        instance: String,
        token_id: String,
    },
    Delete {
        rotation_id: String,
        instance: String,
        token_id: String,
    },
    /// A journaled token missing from two listings `list_lag` apart: nothing left to do.
    Forget {
        rotation_id: String,
        token_id: String,
    },
    /// Journal that a token was missing from this listing (`absent`), or is listed again.
    NoteListing {
        rotation_id: String,
        token_id: String,
        absent: bool,
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
                format!("finish rotation {rotation_id}: mark its verified, delivered token current")
            }
            Planned::Rotate { reason } => format!("rotate: {reason}"),
            Planned::Adopt {
                rotation_id,
                token_id,
            } => format!(
                "adopt token {token_id} (rotation {rotation_id}, an earlier version's, not in this journal) for retirement"
            ),
            Planned::Disable {
                token_id, instance, ..
            } => format!("disable token {token_id} (instance {instance})"),
            Planned::Delete {
                token_id, instance, ..
            } => format!("delete token {token_id} (instance {instance})"),
            Planned::Forget { token_id, .. } => {
                format!("forget token {token_id}: missing from two listings list_lag apart")
            }
            Planned::NoteListing {
                token_id,
                absent: true,
                ..
            } => format!(
                "note token {token_id} missing from the listing (forgotten only if still missing after list_lag)"
            ),
            Planned::NoteListing { token_id, .. } => {
                format!("note token {token_id} listed again")
            }
        }
    }

    /// Only changes the journal (no registry call).
    pub fn journal_only(&self) -> bool {
        matches!(
            self,
            Planned::Adopt { .. } | Planned::Forget { .. } | Planned::NoteListing { .. }
        )
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

/// A token of this name that another installation manages: never touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    pub token_id: String,
    pub why: String,
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
    /// Tokens of this name on this instance that are not ours to touch.
    pub foreign: Vec<Foreign>,
    /// Backing off after failed rotations: no rotation before this time.
    pub backoff_until: Option<DateTime<Utc>>,
    /// Things an operator should know that no step can fix.
    pub notes: Vec<String>,
    /// Is there a current token and did this replica's delivery group
    /// receive it (one journaled before deliveries were recorded counts as
    /// received)? `kcr_housekeeper_token_delivered`.
    pub delivered_here: bool,
}

/// Everything the planner looks at besides the config.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// This installation's id (in every `Desc` it writes).
    pub install_id: &'a str,
    /// This token's journal, every instance it lived on.
    pub journal: &'a [RotationRecord],
    /// Every token of each instance listed this cycle, by instance name; the
    /// token's own instance must be there.
    pub listings: &'a HashMap<String, Vec<Listed>>,
    /// Consecutive failed rotations on the token's instance; ignored when
    /// they failed under another config than [`config_fingerprint`] of `cfg`.
    pub backoff: Option<&'a TokenBackoff>,
    /// The wait after the first failure (doubled after each further one).
    pub retry_base: std::time::Duration,
    /// A token younger than this may be missing from the listing.
    pub list_lag: std::time::Duration,
    /// This replica's `[tokens] delivery_group`.
    pub group: &'a str,
    /// Every delivery record of this token (any group).
    pub deliveries: &'a [DeliveryRecord],
    pub now: DateTime<Utc>,
}

/// Where the groups that received rotation `rotation_id` stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Receivers {
    /// Journaled before deliveries were recorded: who holds it is unknown,
    /// and it is treated as delivered everywhere (an upgrade never rotates
    /// or holds back by itself).
    Unrecorded,
    /// The groups whose sinks began receiving it, and whether every sink
    /// there held it.
    Groups(Vec<(String, bool)>),
}

/// The groups that received rotation `rotation_id`.
pub fn receivers(deliveries: &[DeliveryRecord], rotation_id: &str) -> Receivers {
    let groups: Vec<(String, bool)> = deliveries
        .iter()
        .filter(|d| d.rotation_id == rotation_id)
        .map(|d| (d.group.clone(), d.delivered_at.is_some()))
        .collect();
    if groups.is_empty() {
        Receivers::Unrecorded
    } else {
        Receivers::Groups(groups)
    }
}

/// Did `group`'s sinks all receive rotation `rotation_id` (`None`: unrecorded)?
pub fn delivered_to(deliveries: &[DeliveryRecord], rotation_id: &str, group: &str) -> Option<bool> {
    match receivers(deliveries, rotation_id) {
        Receivers::Unrecorded => None,
        Receivers::Groups(g) => Some(g.iter().any(|(name, done)| name == group && *done)),
    }
}

/// The groups whose sinks may still hold rotation `rotation_id`'s token: they
/// began receiving it and have not since received every sink's worth of a
/// newer token. Retiring it would cut their consumers off ("a credential any
/// consumer may hold is never retired before its replacement is proven").
pub fn stranded(deliveries: &[DeliveryRecord], rotation_id: &str) -> Vec<String> {
    let mut out: Vec<String> = deliveries
        .iter()
        .filter(|d| d.rotation_id == rotation_id)
        .filter(|d| {
            !deliveries.iter().any(|n| {
                n.group == d.group
                    && n.rotation_id != d.rotation_id
                    && n.delivered_at.is_some()
                    && n.began_at > d.began_at
            })
        })
        .map(|d| d.group.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn std_to_chrono(d: std::time::Duration) -> ChronoDuration {
    ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX)
}

/// A fingerprint of a managed token's config: failures under another
/// config (the operator changed a sink) do not hold the next attempt back.
pub fn config_fingerprint(cfg: &ManagedToken) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{cfg:?}").as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// When the next rotation may be tried after `b`: the base doubled per
/// further failure, capped at `rotate_before / 4`.
pub fn backoff_until(
    b: &TokenBackoff,
    base: std::time::Duration,
    rotate_before: std::time::Duration,
) -> DateTime<Utc> {
    let cap = rotate_before / 4;
    let doublings = b.failures.saturating_sub(1).min(32);
    let wait = base
        .checked_mul(1u32 << doublings.min(31))
        .unwrap_or(cap)
        .min(cap);
    b.last_failure_at + std_to_chrono(wait)
}

/// Where a journaled token stands in this cycle's listings.
enum Presence<'l> {
    Listed(&'l Listed),
    /// Not listed, but it may be: too young, or missing from one listing only.
    Maybe,
    /// Missing for the first time: journal it, assume it exists meanwhile.
    FirstMissing,
    /// Missing from two listings `list_lag` apart.
    Gone,
    /// Its instance was not listed (not configured any more).
    Unknown,
}

/// The newest `current` record of `instance`: the token sinks were last given there.
pub fn newest_current<'j>(
    journal: &'j [RotationRecord],
    instance: &str,
) -> Option<&'j RotationRecord> {
    journal
        .iter()
        .filter(|r| r.step == Step::Current && r.instance == instance)
        .max_by_key(|r| (r.updated_at, r.created_at))
}

/// What a replica that runs no job (a follower) can tell from the shared
/// state alone: the current token's id per the journal, and whether
/// `group`'s sinks received it (one journaled before deliveries were
/// recorded counts as received). No listing: whether KCR still lists it is
/// the leader's plan's business.
pub fn delivery_status(
    cfg: &ManagedToken,
    journal: &[RotationRecord],
    deliveries: &[DeliveryRecord],
    group: &str,
) -> (Option<String>, bool) {
    match newest_current(journal, &cfg.instance) {
        None => (None, false),
        Some(r) => (
            r.token_id.clone(),
            delivered_to(deliveries, &r.rotation_id, group) != Some(false),
        ),
    }
}

/// Plan one managed token.
pub fn plan_token(cfg: &ManagedToken, input: &Inputs<'_>) -> TokenPlan {
    let now = input.now;
    let lag = std_to_chrono(input.list_lag);
    let journal = input.journal;
    let mut steps = Vec::new();
    let mut upcoming = Vec::new();
    let mut notes = Vec::new();
    let empty = Vec::new();
    let listed_on = |inst: &str| input.listings.get(inst);
    let here = listed_on(&cfg.instance).unwrap_or(&empty);
    fn ours<'t>(t: &'t Listed, name: &str) -> Option<DescParts<'t>> {
        t.desc
            .as_deref()
            .and_then(parse_desc)
            .filter(|d| d.name == name)
    }
    // A token this journal created on the record's instance, found by rotation id.
    let by_rid = |r: &RotationRecord| {
        listed_on(&r.instance)?.iter().find(|t| {
            ours(t, &cfg.name).is_some_and(|d| {
                d.rotation_id == r.rotation_id && d.install_id.is_none_or(|i| i == input.install_id)
            })
        })
    };
    let presence = |r: &RotationRecord, id: &str| -> Presence<'_> {
        let Some(list) = listed_on(&r.instance) else {
            return Presence::Unknown;
        };
        if let Some(t) = list.iter().find(|t| t.token_id == id) {
            return Presence::Listed(t);
        }
        if now < r.created_at + lag {
            return Presence::Maybe;
        }
        match r.absent_since {
            None => Presence::FirstMissing,
            Some(t) if now < t + lag => Presence::Maybe,
            Some(_) => Presence::Gone,
        }
    };
    let note_missing = |steps: &mut Vec<Planned>, r: &RotationRecord, id: &str| {
        steps.push(Planned::NoteListing {
            rotation_id: r.rotation_id.clone(),
            token_id: id.to_string(),
            absent: true,
        })
    };
    // A token listed again after it was missing once: clear the mark.
    for r in journal {
        if let Some(id) = &r.token_id
            && r.absent_since.is_some()
            && !matches!(r.step, Step::Deleted | Step::Abandoned)
            && let Presence::Listed(_) = presence(r, id)
        {
            steps.push(Planned::NoteListing {
                rotation_id: r.rotation_id.clone(),
                token_id: id.clone(),
                absent: false,
            });
        }
    }

    // The current token: the newest `current` record of this instance whose token is usable.
    let current_rec = newest_current(journal, &cfg.instance);
    let mut rotate_reason: Option<String> = None;
    let current = current_rec.and_then(|r| {
        let id = r.token_id.clone()?;
        let usable = match presence(r, &id) {
            Presence::Listed(t) if !t.enabled => {
                rotate_reason = Some(format!(
                    "current token {id} was disabled outside kcr-housekeeper"
                ));
                false
            }
            Presence::Listed(t) if t.expires_at.is_some_and(|e| e <= now) => {
                rotate_reason = Some(format!("current token {id} has expired"));
                false
            }
            Presence::Listed(_) | Presence::Maybe | Presence::Unknown => true,
            Presence::FirstMissing => {
                note_missing(&mut steps, r, &id);
                true
            }
            Presence::Gone => {
                rotate_reason = Some(format!("current token {id} no longer exists"));
                false
            }
        };
        usable.then(|| Current {
            rotation_id: r.rotation_id.clone(),
            token_id: id.clone(),
            expires_at: here
                .iter()
                .find(|t| t.token_id == id)
                .map_or(r.expires_at, |t| t.expires_at),
        })
    });
    let current_rec = current_rec.filter(|_| current.is_some());
    // Retire others only while the current token is listed (or too young to be).
    let current_confirmed = current_rec.is_some_and(|r| {
        now < r.created_at + lag
            || here
                .iter()
                .any(|t| Some(&t.token_id) == r.token_id.as_ref())
    });

    let delivered_here = current
        .as_ref()
        .and_then(|c| delivered_to(input.deliveries, &c.rotation_id, input.group));

    // Interrupted rotations.
    let mut in_flight = false;
    let mut interrupted_delivery = false;
    for r in journal {
        let step = r.step;
        let rid = r.rotation_id.clone();
        let discard = |token: Option<&Listed>, why: &str| Planned::Discard {
            rotation_id: r.rotation_id.clone(),
            instance: r.instance.clone(),
            token_id: token.map(|t| t.token_id.clone()),
            enabled: token.is_some_and(|t| t.enabled),
            why: why.into(),
        };
        match step {
            Step::Creating => match by_rid(r) {
                Some(t) => steps.push(discard(
                    Some(t),
                    "created by a rotation that stopped before recording it; its secret is lost",
                )),
                None if listed_on(&r.instance).is_none() => notes.push(format!(
                    "rotation {rid} on instance {} (not configured) may have left a token there",
                    r.instance
                )),
                None if now < r.created_at + lag => {
                    in_flight = true;
                    steps.push(Planned::AwaitListing {
                        rotation_id: rid,
                        until: r.created_at + lag,
                    });
                }
                None => steps.push(discard(None, "its CreateInstanceToken never took effect")),
            },
            Step::Created => {
                let id = r.token_id.as_deref().unwrap_or_default();
                match presence(r, id) {
                    Presence::Listed(t) => steps.push(discard(
                        Some(t),
                        "created but never delivered; its secret is lost",
                    )),
                    Presence::Unknown => notes.push(format!(
                        "token {id} on instance {} (not configured) was never delivered; discard it by hand",
                        r.instance
                    )),
                    // Not listed (yet): close it; should it surface, it is discarded then.
                    _ => steps.push(discard(None, "its token is not listed")),
                }
            }
            Step::Delivering | Step::Delivered => {
                // Some sinks (maybe exec ones) may hold it: kept until a newer rotation is
                // current, then retired like a superseded token (below).
                let replaced = current_rec.is_some_and(|c| c.created_at > r.created_at);
                if !replaced && r.instance == cfg.instance {
                    interrupted_delivery = true;
                }
            }
            Step::Verified => {
                let id = r.token_id.as_deref().unwrap_or_default();
                // Every sink holds it: never discarded. Once a newer rotation is
                // current it is retired like a superseded token (below).
                let replaced = current_rec.is_some_and(|c| c.created_at > r.created_at);
                match presence(r, id) {
                    _ if replaced => {}
                    Presence::Listed(_) | Presence::Maybe | Presence::Unknown => {
                        steps.push(Planned::MarkCurrent { rotation_id: rid });
                        in_flight = true;
                    }
                    Presence::FirstMissing => {
                        note_missing(&mut steps, r, id);
                        in_flight = true;
                    }
                    // Missing from two listings: a rotation may start beside it (the
                    // registry may only lag); it is not given up, so a late listing
                    // can never lead to discarding what the sinks hold.
                    Presence::Gone => {}
                }
            }
            Step::Abandoned => {
                // A creation given up on may still surface in the listing later.
                if let Some(t) = by_rid(r) {
                    steps.push(discard(
                        Some(t),
                        "appeared after its rotation was given up; its secret is lost",
                    ));
                }
            }
            _ => {}
        }
    }

    // Rotation, unless backing off after failures.
    let fingerprint = config_fingerprint(cfg);
    let backoff = input.backoff.filter(|b| b.config == fingerprint);
    let backoff_until = backoff
        .map(|b| backoff_until(b, input.retry_base, cfg.rotate_before))
        .filter(|at| *at > now);
    // A backoff matters only while it holds a due rotation back: a row left
    // behind (its clear failed, or the token was renewed another way) must
    // not make a run with nothing due look skipped.
    let mut held_back = None;
    if !in_flight {
        let reason = match (&current, rotate_reason) {
            (None, Some(why)) => Some(why),
            (None, None) => Some("no delivered token yet".to_string()),
            (Some(_), _) if interrupted_delivery => {
                Some("an interrupted rotation left sinks with an unconfirmed token".to_string())
            }
            (Some(c), _) if delivered_here == Some(false) => Some(format!(
                "delivery group {:?} never received current token {} (delivered by {}); only the replica that creates a token knows its secret",
                input.group,
                c.token_id,
                match receivers(input.deliveries, &c.rotation_id) {
                    Receivers::Groups(g) => g
                        .iter()
                        .map(|(name, _)| format!("{name:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    Receivers::Unrecorded => "?".into(),
                }
            )),
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
                            at: (e - before).max(backoff_until.unwrap_or(e - before)),
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
        match (reason, backoff_until, backoff) {
            (Some(reason), Some(at), Some(b)) => {
                held_back = Some(at);
                upcoming.push(Upcoming {
                    at,
                    what: format!(
                        "rotate ({reason}): next attempt after {} failed rotation(s), the last: {}",
                        b.failures, b.error
                    ),
                });
            }
            (Some(reason), _, _) => steps.push(Planned::Rotate { reason }),
            (None, _, _) => {}
        }
    }

    // Tokens of this name on this instance that the journal does not know.
    let known: HashSet<&str> = journal.iter().map(|r| r.rotation_id.as_str()).collect();
    let known_ids: HashSet<&str> = journal
        .iter()
        .filter_map(|r| r.token_id.as_deref())
        .collect();
    let mut foreign = Vec::new();
    let mut adopt = Vec::new();
    for t in here {
        let Some(d) = ours(t, &cfg.name) else {
            continue;
        };
        if known_ids.contains(t.token_id.as_str()) {
            continue;
        }
        match d.install_id {
            Some(i) if i == input.install_id => {
                if !known.contains(d.rotation_id) {
                    notes.push(format!(
                        "token {} carries this installation's id but is not in its journal (state restored from a backup?); left alone",
                        t.token_id
                    ));
                }
            }
            Some(other) => foreign.push(Foreign {
                token_id: t.token_id.clone(),
                why: format!("installation {other} manages it"),
            }),
            None if known.contains(d.rotation_id) => {}
            None => {
                let older = match (current_rec, t.created_at) {
                    (Some(c), Some(created)) => created < c.created_at,
                    _ => false,
                };
                if older {
                    adopt.push((d.rotation_id, t));
                } else if current_rec.is_some() {
                    foreign.push(Foreign {
                        token_id: t.token_id.clone(),
                        why: "an earlier version's Desc, but not older than the current token: maybe another installation's".into(),
                    });
                }
            }
        }
    }

    // Retirement: only while a usable current token exists, and never it.
    if let (Some(c), Some(crec), true) = (&current, current_rec, current_confirmed) {
        let mut adopted = HashSet::new();
        for (rid, t) in adopt {
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
            let retiring = match r.step {
                Step::Superseded | Step::Disabled => true,
                // An older `current` left behind (or one on an instance the token left).
                Step::Current => r.rotation_id != c.rotation_id,
                // Kept since a sink may hold it (or every sink does); replaced now.
                Step::Delivering | Step::Delivered | Step::Verified => {
                    crec.created_at > r.created_at
                }
                // Forgotten after two missed listings, yet listed again (a registry
                // lagging longer still): retire it rather than orphan it.
                Step::Deleted => r.token_id.as_deref().is_some_and(|id| {
                    listed_on(&r.instance).is_some_and(|l| l.iter().any(|t| t.token_id == id))
                }),
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
            let instance = r.instance.clone();
            let t = match presence(r, &id) {
                Presence::Listed(t) => t,
                Presence::Maybe => continue,
                Presence::FirstMissing => {
                    note_missing(&mut steps, r, &id);
                    continue;
                }
                Presence::Gone => {
                    steps.push(Planned::Forget {
                        rotation_id,
                        token_id: id,
                    });
                    continue;
                }
                Presence::Unknown => {
                    notes.push(format!(
                        "token {id} on instance {instance} (not configured any more) cannot be retired; disable and delete it by hand"
                    ));
                    continue;
                }
            };
            if r.step == Step::Disabled || !t.enabled {
                let at = r.updated_at + std_to_chrono(cfg.delete_after);
                if r.step == Step::Deleted && !t.enabled {
                    // Forgotten while disabled: delete_after counts from now on.
                    steps.push(Planned::Disable {
                        rotation_id,
                        instance,
                        token_id: id,
                    });
                } else if r.step != Step::Disabled {
                    // Disabled by someone else: record it, then count delete_after from now.
                    steps.push(Planned::Disable {
                        rotation_id,
                        instance,
                        token_id: id,
                    });
                } else if at <= now {
                    steps.push(Planned::Delete {
                        rotation_id,
                        instance,
                        token_id: id,
                    });
                } else {
                    upcoming.push(Upcoming {
                        at,
                        what: format!("delete token {id}"),
                    });
                }
            } else {
                // Overlap counts from when it stopped being the newest delivered token.
                let since = if r.step == Step::Superseded {
                    r.updated_at
                } else {
                    r.updated_at.max(crec.updated_at)
                };
                let at = since + std_to_chrono(cfg.overlap);
                let held = stranded(input.deliveries, &r.rotation_id);
                let expired = t.expires_at.is_some_and(|e| e <= now);
                if at <= now && !held.is_empty() && !expired {
                    notes.push(format!(
                        "token {id} stays enabled past its overlap: the sinks of delivery group(s) {} received it and no newer token since (only a replica of that group can deliver one, when it leads){}",
                        held.join(", "),
                        t.expires_at
                            .map(|e| format!("; it expires at {}", e.to_rfc3339()))
                            .unwrap_or_default()
                    ));
                } else if at <= now {
                    steps.push(Planned::Disable {
                        rotation_id,
                        instance,
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
    let has_current = current.is_some();
    TokenPlan {
        name: cfg.name.clone(),
        instance: cfg.instance.clone(),
        current,
        steps,
        upcoming,
        foreign,
        backoff_until: held_back,
        notes,
        delivered_here: has_current && delivered_here != Some(false),
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

    const IID: &str = "0123456789ab";

    /// A journal record: rotation `rid` at `step`, created `age` ago, step reached `since` ago.
    fn rec(rid: &str, token: Option<&str>, step: Step, age: i64, since: i64) -> RotationRecord {
        RotationRecord {
            rotation_id: rid.into(),
            token_name: "ci-pull".into(),
            instance: "prod".into(),
            token_id: token.map(Into::into),
            previous_token_id: None,
            step,
            expires_at: None,
            created_at: now() - hours(age),
            updated_at: now() - hours(since),
            error: None,
            absent_since: None,
        }
    }

    /// A listed token of this installation's managed name expiring in `expires_in` hours.
    fn listed(id: &str, rid: &str, enabled: bool, expires_in: i64) -> Listed {
        Listed {
            token_id: id.into(),
            enabled,
            desc: Some(desc("ci-pull", IID, rid)),
            created_at: None,
            expires_at: Some(now() + hours(expires_in)),
        }
    }

    /// A token in the format before installation ids, created `age` hours ago.
    fn old_listed(id: &str, rid: &str, enabled: bool, age: i64) -> Listed {
        Listed {
            token_id: id.into(),
            enabled,
            desc: Some(format!("{DESC_PREFIX}ci-pull/{rid}")),
            created_at: Some(now() - hours(age)),
            expires_at: Some(now() + hours(100)),
        }
    }

    fn inputs<'a>(
        journal: &'a [RotationRecord],
        listings: &'a HashMap<String, Vec<Listed>>,
        backoff: Option<&'a TokenBackoff>,
    ) -> Inputs<'a> {
        Inputs {
            install_id: IID,
            journal,
            listings,
            backoff,
            retry_base: std::time::Duration::from_secs(3600),
            list_lag: LAG,
            group: "a",
            deliveries: &[],
            now: now(),
        }
    }

    fn plan(journal: &[RotationRecord], tokens: &[Listed]) -> TokenPlan {
        let listings = HashMap::from([("prod".to_string(), tokens.to_vec())]);
        plan_token(&cfg(), &inputs(journal, &listings, None))
    }

    fn short(s: &Planned) -> String {
        match s {
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
            Planned::Disable {
                token_id, instance, ..
            } if instance != "prod" => format!("disable {token_id}@{instance}"),
            Planned::Disable { token_id, .. } => format!("disable {token_id}"),
            Planned::Delete { token_id, .. } => format!("delete {token_id}"),
            Planned::Forget { token_id, .. } => format!("forget {token_id}"),
            Planned::NoteListing {
                token_id, absent, ..
            } => format!(
                "note {token_id} {}",
                if *absent { "missing" } else { "listed" }
            ),
        }
    }

    fn steps(journal: &[RotationRecord], tokens: &[Listed]) -> Vec<String> {
        plan(journal, tokens).steps.iter().map(short).collect()
    }

    #[test]
    fn desc_round_trips_and_rejects_foreign_text() {
        assert_eq!(
            parse_desc(&desc("ci-pull", IID, "r1")),
            Some(DescParts {
                name: "ci-pull",
                install_id: Some(IID),
                rotation_id: "r1"
            })
        );
        assert_eq!(
            parse_desc("kcr-housekeeper/ci-pull/r-seed"),
            Some(DescParts {
                name: "ci-pull",
                install_id: None,
                rotation_id: "r-seed"
            })
        );
        assert_eq!(parse_desc("kcr-housekeeper/ci-pull/"), None);
        assert_eq!(parse_desc("kcr-housekeeper/a//c"), None);
        assert_eq!(parse_desc("kcr-housekeeper/a/b/c/d"), None);
        assert_eq!(parse_desc("ci token"), None);
        // The longest name fits the API's 256 bytes with a real rotation id.
        let name = "n".repeat(MAX_NAME_LEN);
        let d = desc(&name, IID, "r20261122T120000Z-1a2b");
        assert_eq!(d.len(), DESC_MAX);
        assert_eq!(d.len(), desc_len(MAX_NAME_LEN));
        for &s in Step::ALL {
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
                "current missing from one listing: noted, not replaced yet",
                vec![c_fresh.clone()],
                vec![],
                vec!["note t1 missing"],
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
                "delivery interrupted, newer rotation current: kept through the overlap (an exec sink may hold it)",
                vec![
                    rec("r2", Some("t2"), Step::Delivering, 2, 2),
                    rec("r3", Some("t3"), Step::Current, 1, 1),
                ],
                vec![listed("t2", "r2", true, 720), listed("t3", "r3", true, 720)],
                vec![],
            ),
            (
                "delivery interrupted, newer rotation current past the overlap: disable, never discard",
                vec![
                    rec("r2", Some("t2"), Step::Delivering, 30, 30),
                    rec("r3", Some("t3"), Step::Current, 26, 25),
                ],
                vec![listed("t2", "r2", true, 720), listed("t3", "r3", true, 720)],
                vec!["disable t2"],
            ),
            (
                "verified, superseded by a newer current one past the overlap: retired, never discarded",
                vec![
                    rec("r2", Some("t2"), Step::Verified, 30, 30),
                    rec("r3", Some("t3"), Step::Current, 26, 25),
                ],
                vec![listed("t2", "r2", true, 720), listed("t3", "r3", true, 720)],
                vec!["disable t2"],
            ),
            (
                "verified, its token missing from two listings (a lagging registry): never discarded; the due rotation goes on",
                vec![c_old.clone(), {
                    let mut r = rec("r2", Some("t2"), Step::Verified, 3, 3);
                    r.absent_since = Some(now() - hours(2));
                    r
                }],
                vec![t_old.clone()],
                vec!["rotate"],
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
                "retiring token gone from two listings: forget",
                vec![
                    RotationRecord {
                        absent_since: Some(now() - hours(1)),
                        ..rec("r0", Some("t0"), Step::Superseded, 900, 25)
                    },
                    c_fresh.clone(),
                ],
                vec![t_fresh.clone()],
                vec!["forget t0"],
            ),
            (
                "current unconfirmed (missing once): never retire the previous token",
                vec![
                    rec("r0", Some("t0"), Step::Superseded, 900, 25),
                    c_fresh.clone(),
                ],
                vec![listed("t0", "r0", true, 100)],
                vec!["note t1 missing"],
            ),
            (
                "a forgotten token listed again: retired, not orphaned",
                vec![
                    rec("r0", Some("t0"), Step::Deleted, 900, 25),
                    c_fresh.clone(),
                ],
                vec![listed("t0", "r0", true, 100), t_fresh.clone()],
                vec!["disable t0"],
            ),
            (
                "a deleted token (not listed) stays closed",
                vec![
                    rec("r0", Some("t0"), Step::Deleted, 900, 25),
                    c_fresh.clone(),
                ],
                vec![t_fresh.clone()],
                vec![],
            ),
            (
                "no usable current: never retire the previous token",
                vec![
                    rec("r0", Some("t0"), Step::Superseded, 900, 25),
                    rec("r1", Some("t1"), Step::Current, 500, 500),
                ],
                vec![
                    listed("t0", "r0", true, 100),
                    listed("t1", "r1", false, 100),
                ],
                vec!["rotate"],
            ),
            (
                "a token of this name from an earlier installation: adopt it",
                vec![c_fresh.clone()],
                vec![t_fresh.clone(), old_listed("tx", "r-seed", true, 600)],
                vec!["adopt tx"],
            ),
            (
                "an earlier installation's token before any rotation: leave it, rotate",
                vec![],
                vec![old_listed("tx", "r-seed", true, 600)],
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
                        desc: Some(desc("other", IID, "r9")),
                        created_at: None,
                        expires_at: None,
                    },
                    Listed {
                        token_id: "u2".into(),
                        enabled: true,
                        desc: None,
                        created_at: None,
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
        let p = plan(&journal, &tokens);
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
        let p = plan(&journal, &tokens);
        let when: Vec<(i64, &str)> = p
            .upcoming
            .iter()
            .map(|u| ((u.at - now()).num_hours(), u.what.as_str()))
            .collect();
        assert_eq!(when[0], (22, "disable token t0 (overlap ends)"));
        assert_eq!(when[1].0, 10 * 24);
        assert!(when[1].1.starts_with("rotate"));
    }

    /// Defect 6: another installation's tokens of the same name are never
    /// touched (not adopted, not discarded as a lost creation), only reported;
    /// an earlier version's token is adopted only when older than our current.
    #[test]
    fn foreign_installations_are_reported_never_touched() {
        let foreign_desc = |id: &str, rid: &str| Listed {
            token_id: id.into(),
            enabled: true,
            desc: Some(desc("ci-pull", "ffffffffffff", rid)),
            created_at: Some(now() - hours(1)),
            expires_at: Some(now() + hours(700)),
        };
        let cur = rec("r1", Some("t1"), Step::Current, 500, 500);
        let t1 = listed("t1", "r1", true, 20 * 24);
        type Case = (
            &'static str,
            Vec<RotationRecord>,
            Vec<Listed>,
            Vec<&'static str>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "another installation's current token: reported, not adopted",
                vec![cur.clone()],
                vec![t1.clone(), foreign_desc("f1", "r9")],
                vec![],
                vec!["f1"],
            ),
            (
                "another installation's token with our pending rotation id: not ours to discard",
                vec![cur.clone(), rec("r2", None, Step::Creating, 1, 1)],
                vec![t1.clone(), foreign_desc("f2", "r2")],
                vec!["discard r2 -"],
                vec!["f2"],
            ),
            (
                "an earlier version's token newer than our current: not adopted",
                vec![cur.clone()],
                vec![t1.clone(), old_listed("tx", "r-x", true, 10)],
                vec![],
                vec!["tx"],
            ),
            (
                "an earlier version's token older than our current: adopted",
                vec![cur.clone()],
                vec![t1.clone(), old_listed("tx", "r-x", true, 600)],
                vec!["adopt tx"],
                vec![],
            ),
        ];
        for (name, journal, tokens, want, want_foreign) in cases {
            let p = plan(&journal, &tokens);
            let got: Vec<String> = p.steps.iter().map(short).collect();
            assert_eq!(got, want, "case: {name}");
            let f: Vec<&str> = p.foreign.iter().map(|f| f.token_id.as_str()).collect();
            assert_eq!(f, want_foreign, "case: {name}");
        }
    }

    /// Defect 7: after failed rotations no token is created until the
    /// backoff (base doubled per failure, capped at rotate_before / 4) ends,
    /// and the plan says when the next attempt is due.
    #[test]
    fn failed_rotations_back_off_exponentially_up_to_a_quarter_of_rotate_before() {
        let journal = vec![rec("r1", Some("t1"), Step::Current, 500, 500)];
        let tokens = vec![listed("t1", "r1", true, 5 * 24)];
        let listings = HashMap::from([("prod".to_string(), tokens)]);
        let cases = [
            // (failures, last failure hours ago, next attempt in hours or None = now)
            (1, 0, Some(1)),
            (1, 1, None),
            (3, 1, Some(3)),
            (3, 4, None),
            (20, 59, Some(1)), // capped at 10d / 4 = 60h
            (20, 60, None),
        ];
        // A backoff row with nothing due holds nothing back and is not
        // reported as backing off (the run would fail as skipped).
        let fresh = vec![listed("t1", "r1", true, 30 * 24)];
        let fresh = HashMap::from([("prod".to_string(), fresh)]);
        let leftover = TokenBackoff {
            failures: 3,
            last_failure_at: now(),
            error: "boom".into(),
            config: config_fingerprint(&cfg()),
        };
        let p = plan_token(&cfg(), &inputs(&journal, &fresh, Some(&leftover)));
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        assert_eq!(p.backoff_until, None);
        // Failures under another config (a sink was fixed) hold nothing back.
        let other = TokenBackoff {
            failures: 5,
            last_failure_at: now(),
            error: "boom".into(),
            config: "another config".into(),
        };
        let p = plan_token(&cfg(), &inputs(&journal, &listings, Some(&other)));
        assert_eq!(
            p.steps.iter().map(short).collect::<Vec<_>>(),
            vec!["rotate"]
        );
        for (failures, ago, next) in cases {
            let b = TokenBackoff {
                failures,
                last_failure_at: now() - hours(ago),
                error: "boom".into(),
                config: config_fingerprint(&cfg()),
            };
            let p = plan_token(&cfg(), &inputs(&journal, &listings, Some(&b)));
            let rotate = p.steps.iter().any(|s| matches!(s, Planned::Rotate { .. }));
            match next {
                None => {
                    assert!(rotate, "{failures} failures {ago}h ago: due");
                    assert_eq!(p.backoff_until, None);
                }
                Some(h) => {
                    assert!(!rotate, "{failures} failures {ago}h ago: backing off");
                    assert_eq!(p.backoff_until, Some(now() + hours(h)));
                    assert!(
                        p.upcoming.iter().any(|u| u.at == now() + hours(h)
                            && u.what.contains("next attempt after")
                            && u.what.contains("boom")),
                        "{:?}",
                        p.upcoming
                    );
                }
            }
        }
    }

    /// Defect 9: a journaled token missing from the listing is forgotten only
    /// after two listings list_lag apart missed it; the current token is not
    /// replaced on one missed listing either.
    #[test]
    fn a_token_is_forgotten_only_after_two_missed_listings_list_lag_apart() {
        let mins = ChronoDuration::minutes;
        let absent = |mut r: RotationRecord, ago: ChronoDuration| {
            r.absent_since = Some(now() - ago);
            r
        };
        let old = rec("r0", Some("t0"), Step::Superseded, 900, 25);
        let cur = rec("r1", Some("t1"), Step::Current, 500, 500);
        let t1 = listed("t1", "r1", true, 20 * 24);
        let t0 = listed("t0", "r0", true, 100);
        type Case = (
            &'static str,
            Vec<RotationRecord>,
            Vec<Listed>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "retiring token missed once: noted, not forgotten",
                vec![old.clone(), cur.clone()],
                vec![t1.clone()],
                vec!["note t0 missing"],
            ),
            (
                "missed again within list_lag: wait",
                vec![absent(old.clone(), mins(1)), cur.clone()],
                vec![t1.clone()],
                vec![],
            ),
            (
                "missed again list_lag later: forgotten",
                vec![absent(old.clone(), mins(3)), cur.clone()],
                vec![t1.clone()],
                vec!["forget t0"],
            ),
            (
                "listed again: the mark is cleared, retirement goes on",
                vec![absent(old.clone(), mins(3)), cur.clone()],
                vec![t0.clone(), t1.clone()],
                vec!["note t0 listed", "disable t0"],
            ),
            (
                "current token missed once: noted, no new rotation",
                vec![cur.clone()],
                vec![],
                vec!["note t1 missing"],
            ),
            (
                "current token missed twice: replaced",
                vec![absent(cur.clone(), mins(3))],
                vec![],
                vec!["rotate"],
            ),
        ];
        for (name, journal, tokens, want) in cases {
            assert_eq!(steps(&journal, &tokens), want, "case: {name}");
        }
    }

    /// Defect 10: a managed token moved to another instance: the journal is
    /// per (name, instance), the old instance's token is retired there.
    #[test]
    fn a_token_moved_to_another_instance_retires_the_old_instance_token() {
        let on = |mut r: RotationRecord, inst: &str| {
            r.instance = inst.into();
            r
        };
        let t_old = listed("t-old", "r0", true, 20 * 24);
        // Before the first rotation on prod: the old instance's current is not ours here.
        let journal = vec![on(
            rec("r0", Some("t-old"), Step::Current, 500, 500),
            "staging",
        )];
        let listings = HashMap::from([
            ("prod".to_string(), vec![]),
            ("staging".to_string(), vec![t_old.clone()]),
        ]);
        let p = plan_token(&cfg(), &inputs(&journal, &listings, None));
        assert_eq!(p.current, None);
        assert_eq!(
            p.steps.iter().map(short).collect::<Vec<_>>(),
            vec!["rotate"]
        );
        // After it: the old token is retired on its own instance.
        let journal = vec![
            on(
                rec("r0", Some("t-old"), Step::Superseded, 500, 25),
                "staging",
            ),
            rec("r1", Some("t1"), Step::Current, 25, 25),
        ];
        let listings = HashMap::from([
            ("prod".to_string(), vec![listed("t1", "r1", true, 700)]),
            ("staging".to_string(), vec![t_old.clone()]),
        ]);
        let p = plan_token(&cfg(), &inputs(&journal, &listings, None));
        assert_eq!(
            p.steps.iter().map(short).collect::<Vec<_>>(),
            vec!["disable t-old@staging"]
        );
        // The old instance is no longer configured (not listed): nothing is forgotten, it is reported.
        let listings = HashMap::from([("prod".to_string(), vec![listed("t1", "r1", true, 700)])]);
        let p = plan_token(&cfg(), &inputs(&journal, &listings, None));
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        assert!(p.notes[0].contains("t-old"), "{:?}", p.notes);
    }

    /// A delivery record: `group` began receiving rotation `rid` `age` hours
    /// ago and (if `done`) every sink there held it.
    fn dlv(rid: &str, group: &str, age: i64, done: bool) -> DeliveryRecord {
        DeliveryRecord {
            rotation_id: rid.into(),
            token_name: "ci-pull".into(),
            group: group.into(),
            token_id: format!("t{}", &rid[1..]),
            began_at: now() - hours(age),
            delivered_at: done.then(|| now() - hours(age)),
        }
    }

    /// Step 10: replicas of one state deliver to their own sinks (delivery
    /// groups); this replica is group "a". A current token another group
    /// delivered makes a leader rotate, and a token a group received stays
    /// enabled past its overlap until that group received a newer one.
    #[test]
    fn delivery_groups_rotate_early_and_hold_back_what_a_group_may_still_hold() {
        let old = rec("r0", Some("t0"), Step::Superseded, 900, 25);
        let cur = rec("r1", Some("t1"), Step::Current, 500, 25);
        let listing = vec![listed("t0", "r0", true, 100), listed("t1", "r1", true, 480)];
        type Case = (
            &'static str,
            Vec<DeliveryRecord>,
            Vec<&'static str>,
            bool,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                "no records (journaled before Step 10): as before",
                vec![],
                vec!["disable t0"],
                true,
                "",
            ),
            (
                "one group delivered both: as before",
                vec![dlv("r0", "a", 900, true), dlv("r1", "a", 500, true)],
                vec!["disable t0"],
                true,
                "",
            ),
            (
                "b took over from a: rotate; t0 stays enabled, a's sinks hold it until a has a newer one",
                vec![dlv("r0", "a", 900, true), dlv("r1", "b", 500, true)],
                vec!["rotate"],
                false,
                "t0 stays enabled past its overlap: the sinks of delivery group(s) a",
            ),
            (
                "a began a newer delivery but never finished it: its sinks may still hold t0",
                vec![
                    dlv("r0", "a", 900, true),
                    dlv("r1", "a", 500, false),
                    dlv("r1", "b", 500, true),
                ],
                vec!["rotate"],
                false,
                "delivery group(s) a",
            ),
            (
                "a and b both received t1 (a shared group would): t0 retired",
                vec![
                    dlv("r0", "a", 900, true),
                    dlv("r0", "b", 900, true),
                    dlv("r1", "a", 500, true),
                    dlv("r1", "b", 500, true),
                ],
                vec!["disable t0"],
                true,
                "",
            ),
            (
                "b received t0 and never a newer one: held for b although a is current",
                vec![dlv("r0", "b", 900, true), dlv("r1", "a", 500, true)],
                vec![],
                true,
                "delivery group(s) b",
            ),
        ];
        for (label, deliveries, want, delivered, note) in cases {
            let listings = HashMap::from([("prod".to_string(), listing.clone())]);
            let journal = vec![old.clone(), cur.clone()];
            let p = plan_token(
                &cfg(),
                &Inputs {
                    deliveries: &deliveries,
                    ..inputs(&journal, &listings, None)
                },
            );
            let got: Vec<String> = p.steps.iter().map(short).collect();
            assert_eq!(got, want, "{label}: {:?}", p.steps);
            assert_eq!(p.delivered_here, delivered, "{label}");
            if note.is_empty() {
                assert!(p.notes.is_empty(), "{label}: {:?}", p.notes);
            } else {
                assert!(
                    p.notes.iter().any(|n| n.contains(note)),
                    "{label}: {:?}",
                    p.notes
                );
            }
            if let Some(Planned::Rotate { reason }) = p.steps.first() {
                assert!(
                    reason.contains("delivery group \"a\" never received current token t1"),
                    "{label}: {reason}"
                );
            }
        }
        // An expired token holds nothing back: its consumers are cut off anyway.
        let listings = HashMap::from([(
            "prod".to_string(),
            vec![listed("t0", "r0", true, -1), listed("t1", "r1", true, 480)],
        )]);
        let journal = vec![old.clone(), cur.clone()];
        let deliveries = vec![dlv("r0", "b", 900, true), dlv("r1", "a", 500, true)];
        let p = plan_token(
            &cfg(),
            &Inputs {
                deliveries: &deliveries,
                ..inputs(&journal, &listings, None)
            },
        );
        assert_eq!(
            p.steps.iter().map(short).collect::<Vec<_>>(),
            ["disable t0"]
        );
        // No current token at all: nothing delivered here.
        let p = plan(&[], &[]);
        assert!(!p.delivered_here);
        // Backing off after failed rotations holds the early rotation back too.
        let backoff = TokenBackoff {
            failures: 1,
            last_failure_at: now() - ChronoDuration::minutes(10),
            error: "boom".into(),
            config: config_fingerprint(&cfg()),
        };
        let listings = HashMap::from([("prod".to_string(), listing.clone())]);
        let deliveries = vec![dlv("r1", "b", 500, true)];
        let p = plan_token(
            &cfg(),
            &Inputs {
                deliveries: &deliveries,
                ..inputs(&journal, &listings, Some(&backoff))
            },
        );
        assert!(
            p.steps.iter().all(|s| !matches!(s, Planned::Rotate { .. })),
            "{:?}",
            p.steps
        );
        assert!(p.backoff_until.is_some());
    }

    #[test]
    fn a_follower_reads_its_delivery_status_from_the_journal_alone() {
        let journal = vec![
            rec("r0", Some("t0"), Step::Superseded, 900, 25),
            rec("r1", Some("t1"), Step::Current, 500, 25),
        ];
        let d = vec![dlv("r0", "a", 900, true), dlv("r1", "b", 500, true)];
        assert_eq!(
            delivery_status(&cfg(), &journal, &d, "a"),
            (Some("t1".into()), false)
        );
        assert_eq!(
            delivery_status(&cfg(), &journal, &d, "b"),
            (Some("t1".into()), true)
        );
        assert_eq!(
            delivery_status(&cfg(), &journal, &[], "a"),
            (Some("t1".into()), true),
            "unrecorded: delivered everywhere"
        );
        assert_eq!(
            delivery_status(&cfg(), &journal[..1], &d, "a"),
            (None, false)
        );
    }

    #[test]
    fn stranded_groups_are_those_without_a_newer_complete_delivery() {
        let d = vec![
            dlv("r0", "a", 900, true),
            dlv("r0", "b", 900, true),
            dlv("r1", "a", 500, true),
            dlv("r2", "b", 100, false),
        ];
        assert_eq!(stranded(&d, "r0"), ["b"]);
        assert_eq!(stranded(&d, "r1"), ["a"]);
        assert_eq!(stranded(&d, "r9"), Vec::<String>::new());
        assert_eq!(receivers(&d, "r9"), Receivers::Unrecorded);
        assert_eq!(delivered_to(&d, "r2", "b"), Some(false));
        assert_eq!(delivered_to(&d, "r1", "a"), Some(true));
        assert_eq!(delivered_to(&d, "r1", "b"), Some(false));
        assert_eq!(delivered_to(&d, "r9", "b"), None);
    }
}
