//! The three-way merge of a client card: our copy, the CRM's, and the *base* both last agreed on
//! (per field, a digest of the value last written to or taken from the CRM). The dispatcher, the
//! webhook processor and reconciliation all decide with [`merge`]; it is pure, so each rule is a
//! unit test (`docs/two-way-sync.md`, "Merge and conflicts").

use super::model::{Card, Field, Source, Stamp, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;

/// Who decides a field when both sides changed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// The CRM's value wins.
    Crm,
    /// Our value wins, and a change made in the CRM alone is written back over.
    Ours,
    /// The later change wins (ties go to the CRM).
    Newest,
    /// A person decides: an operator task.
    Ask,
}

impl Owner {
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Crm => "crm",
            Owner::Ours => "ours",
            Owner::Newest => "newest",
            Owner::Ask => "ask",
        }
    }
}

/// Per-field ownership (`[two_way.ownership]`); fields not listed are [`Owner::Newest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ownership(pub BTreeMap<Field, Owner>);

impl Default for Ownership {
    /// The CRM owns the manager; we own the phone and the consents; a person decides the segment.
    fn default() -> Self {
        Self(BTreeMap::from([
            (Field::Manager, Owner::Crm),
            (Field::Phone, Owner::Ours),
            (Field::ConsentSms, Owner::Ours),
            (Field::ConsentEmail, Owner::Ours),
            (Field::Segment, Owner::Ask),
        ]))
    }
}

impl Ownership {
    pub fn of(&self, field: Field) -> Owner {
        self.0.get(&field).copied().unwrap_or(Owner::Newest)
    }
}

/// Per field, the digest of the value both sides last agreed on. A field never synced is absent.
pub type Base = BTreeMap<Field, String>;

/// Per field, digests of values a session sent to the CRM and did not see committed as the new
/// base (it may have crashed after the CRM took them), oldest first, at most [`MAX_WRITING`].
pub type Writing = BTreeMap<Field, Vec<String>>;

/// Digests kept per field in [`Writing`].
pub const MAX_WRITING: usize = 4;

/// The digests of `fields` of `card`, as the base keeps them.
pub fn digests(card: &Card, fields: &[Field]) -> Base {
    fields
        .iter()
        .map(|f| (*f, normal(*f, card.get(*f)).digest()))
        .collect()
}

/// `writing` with `noted` added (the oldest dropped past [`MAX_WRITING`]).
pub fn add_writing(writing: &Writing, noted: &Base) -> Writing {
    let mut out = writing.clone();
    for (field, digest) in noted {
        let kept = out.entry(*field).or_default();
        kept.retain(|d| d != digest);
        kept.push(digest.clone());
        if kept.len() > MAX_WRITING {
            kept.remove(0);
        }
    }
    out
}

/// The base as it is once our own uncommitted writes are recognised: where the CRM holds a value
/// we were writing, that value is ours, not a change of theirs. Returns the base to merge with
/// and the fields it corrects (the new base must record them).
pub fn with_our_writes(base: &Base, writing: &Writing, theirs: Option<&Card>) -> (Base, Base) {
    let mut corrected = Base::new();
    if let Some(theirs) = theirs {
        for (field, digests) in writing {
            let td = normal(*field, theirs.get(*field)).digest();
            if base.get(field) != Some(&td) && digests.contains(&td) {
                corrected.insert(*field, td);
            }
        }
    }
    let mut merged = base.clone();
    merged.extend(corrected.clone());
    (merged, corrected)
}

/// Our side: the card and, per field, when and by whom it last changed.
#[derive(Debug, Clone, Default)]
pub struct Ours<'a> {
    pub card: Option<&'a Card>,
    pub stamps: Option<&'a BTreeMap<Field, Stamp>>,
}

/// The CRM's side: its card (absent when it has no record yet) and when the record last changed.
#[derive(Debug, Clone, Default)]
pub struct Theirs<'a> {
    pub card: Option<&'a Card>,
    pub modified_at: Option<OffsetDateTime>,
}

/// How a conflict ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    CrmWins,
    OursWins,
    /// An operator task was opened; our value stays until it is resolved.
    OperatorTask,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::CrmWins => "crm_wins",
            Resolution::OursWins => "ours_wins",
            Resolution::OperatorTask => "operator_task",
        }
    }
}

/// Both sides changed one field since the base, to different values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub field: Field,
    pub ours: Value,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ours_at: Option<OffsetDateTime>,
    pub ours_source: Option<Source>,
    pub theirs: Value,
    #[serde(with = "time::serde::rfc3339::option")]
    pub theirs_at: Option<OffsetDateTime>,
    pub rule: Owner,
    pub resolution: Resolution,
    /// For people: which rule decided, and why.
    pub reason: String,
}

/// What to do to make both sides agree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Values to take into our copy (source `crm`).
    pub to_ours: BTreeMap<Field, Value>,
    /// Values to write to the CRM.
    pub to_crm: BTreeMap<Field, Value>,
    /// The new base, per field, once both writes are done (fields left out keep theirs).
    pub base: Base,
    pub conflicts: Vec<Conflict>,
    /// The CRM's card equals the base in every field the base knows: what came back is what was
    /// last written (an echo of our own write, or a repeat).
    pub echo: bool,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.to_ours.is_empty() && self.to_crm.is_empty() && self.conflicts.is_empty()
    }
}

/// Decides every field. `pending` are fields with an open operator task (left alone until it
/// is resolved); `forced` are fields an operator has just resolved (our value is written).
pub fn merge(
    ownership: &Ownership,
    base: &Base,
    ours: &Ours<'_>,
    theirs: &Theirs<'_>,
    pending: &BTreeSet<Field>,
    forced: &BTreeSet<Field>,
) -> Plan {
    static EMPTY_CARD: std::sync::OnceLock<Card> = std::sync::OnceLock::new();
    let empty = EMPTY_CARD.get_or_init(Card::default);
    let our_card = ours.card.unwrap_or(empty);
    let their_card = theirs.card.unwrap_or(empty);
    let mut plan = Plan {
        echo: theirs.card.is_some() && !base.is_empty(),
        ..Plan::default()
    };
    for field in Field::ALL {
        let (o, t) = (
            normal(field, our_card.get(field)),
            normal(field, their_card.get(field)),
        );
        let (o, t) = (&o, &t);
        let (od, td) = (o.digest(), t.digest());
        let b = base.get(&field);
        if b.is_some_and(|b| *b != td) {
            plan.echo = false;
        }
        if pending.contains(&field) {
            continue;
        }
        if forced.contains(&field) {
            if od != td {
                plan.to_crm.insert(field, o.clone());
            }
            plan.base.insert(field, od);
            continue;
        }
        if od == td {
            if b != Some(&od) && !(b.is_none() && *o == Value::Empty) {
                plan.base.insert(field, od);
            }
            continue;
        }
        // A field never synced counts as unchanged on the side where it is empty (for a consent:
        // not given, so a CRM's unticked checkbox is no change of theirs).
        let unset = normal(field, &Value::Empty);
        let ours_changed = match b {
            Some(b) => *b != od,
            None => *o != unset,
        };
        let theirs_changed = match b {
            Some(b) => *b != td,
            None => *t != unset,
        };
        let rule = ownership.of(field);
        match (ours_changed, theirs_changed) {
            (false, false) => {}
            (true, false) => take_ours(&mut plan, field, o, od),
            (false, true) => {
                if rule == Owner::Ours {
                    take_ours(&mut plan, field, o, od);
                } else {
                    take_theirs(&mut plan, field, t, td);
                }
            }
            (true, true) => {
                let stamp = ours.stamps.and_then(|s| s.get(&field));
                let ours_at = stamp.map(|s| s.at);
                let (resolution, reason) = match rule {
                    Owner::Crm => (Resolution::CrmWins, format!("the CRM owns {field}")),
                    Owner::Ours => (Resolution::OursWins, format!("we own {field}")),
                    Owner::Ask => (
                        Resolution::OperatorTask,
                        format!("{field} changed on both sides; the rule asks a person"),
                    ),
                    Owner::Newest => match (ours_at, theirs.modified_at) {
                        (Some(a), Some(b)) if a > b => (
                            Resolution::OursWins,
                            "last write wins: our change is later".to_owned(),
                        ),
                        (Some(_), Some(_)) => (
                            Resolution::CrmWins,
                            "last write wins: the CRM's change is later or as late".to_owned(),
                        ),
                        _ => (
                            Resolution::CrmWins,
                            "last write wins: a change time is missing; the CRM's value is kept".to_owned(),
                        ),
                    },
                };
                match resolution {
                    Resolution::CrmWins => take_theirs(&mut plan, field, t, td),
                    Resolution::OursWins => take_ours(&mut plan, field, o, od),
                    Resolution::OperatorTask => {}
                }
                plan.conflicts.push(Conflict {
                    field,
                    ours: o.clone(),
                    ours_at,
                    ours_source: stamp.map(|s| s.source),
                    theirs: t.clone(),
                    theirs_at: theirs.modified_at,
                    rule,
                    resolution,
                    reason,
                });
            }
        }
    }
    plan
}

/// Whether two values of a field are the same for the sync (an unknown consent is `false`).
pub fn agree(field: Field, a: &Value, b: &Value) -> bool {
    normal(field, a) == normal(field, b)
}

/// The value as compared: a consent nobody gave is no consent (CRMs such as Salesforce keep
/// checkboxes that cannot be empty), so an unknown consent and `false` are the same value.
fn normal(field: Field, value: &Value) -> Value {
    if field.is_flag() && *value == Value::Empty {
        Value::Flag(false)
    } else {
        value.clone()
    }
}

fn take_ours(plan: &mut Plan, field: Field, value: &Value, digest: String) {
    plan.to_crm.insert(field, value.clone());
    plan.base.insert(field, digest);
}

fn take_theirs(plan: &mut Plan, field: Field, value: &Value, digest: String) {
    plan.to_ours.insert(field, value.clone());
    plan.base.insert(field, digest);
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
