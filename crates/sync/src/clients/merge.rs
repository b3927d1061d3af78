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
mod tests {
    use super::*;
    use time::macros::datetime;

    fn card(pairs: &[(Field, &str)]) -> Card {
        pairs
            .iter()
            .fold(Card::default(), |c, (f, v)| c.with(*f, Value::text(*v)))
    }

    fn base_of(c: &Card) -> Base {
        Field::ALL
            .into_iter()
            .filter(|f| *c.get(*f) != Value::Empty)
            .map(|f| (f, c.get(f).digest()))
            .collect()
    }

    fn run(base: &Base, ours: &Card, theirs: &Card) -> Plan {
        merge(
            &Ownership::default(),
            base,
            &Ours {
                card: Some(ours),
                stamps: None,
            },
            &Theirs {
                card: Some(theirs),
                modified_at: None,
            },
            &BTreeSet::new(),
            &BTreeSet::new(),
        )
    }

    #[test]
    fn a_first_sync_sends_our_card_to_a_crm_without_the_record() {
        let ours = card(&[(Field::FirstName, "Ada"), (Field::Phone, "+79990000001")]);
        let plan = merge(
            &Ownership::default(),
            &Base::new(),
            &Ours {
                card: Some(&ours),
                stamps: None,
            },
            &Theirs::default(),
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        assert_eq!(plan.to_crm.len(), 2);
        assert!(plan.to_ours.is_empty() && plan.conflicts.is_empty());
        assert!(!plan.echo);
        for (f, d) in base_of(&ours) {
            assert_eq!(plan.base.get(&f), Some(&d));
        }
        // Unknown consents are agreed as "no consent".
        assert_eq!(
            plan.base.get(&Field::ConsentSms),
            Some(&Value::Flag(false).digest())
        );
    }

    #[test]
    fn a_first_sync_with_an_unticked_consent_in_the_crm_is_no_conflict() {
        // The CRM has the contact already, its checkbox unticked; we hold a consent. Never synced:
        // only our side changed, so our value goes and nothing is logged as a conflict.
        let ours = Card::default().with(Field::ConsentSms, Value::Flag(true));
        let theirs = Card::default().with(Field::ConsentSms, Value::Flag(false));
        let plan = run(&Base::new(), &ours, &theirs);
        assert!(plan.conflicts.is_empty(), "{:?}", plan.conflicts);
        assert_eq!(plan.to_crm.get(&Field::ConsentSms), Some(&Value::Flag(true)));
        // And a CRM-side consent on a field we never set is theirs (a change of theirs alone).
        let ours = Card::default();
        let theirs = Card::default().with(Field::ConsentEmail, Value::Flag(true));
        let plan = run(&Base::new(), &ours, &theirs);
        assert!(plan.conflicts.is_empty(), "{:?}", plan.conflicts);
        // We own the consents: what we hold (no consent) is written back.
        assert_eq!(plan.to_crm.get(&Field::ConsentEmail), Some(&Value::Flag(false)));
    }

    #[test]
    fn what_comes_back_equal_to_the_base_is_an_echo_and_changes_nothing() {
        let c = card(&[(Field::FirstName, "Ada"), (Field::Segment, "vip")]);
        let plan = run(&base_of(&c), &c, &c);
        assert!(plan.is_noop());
        assert!(plan.echo);
    }

    #[test]
    fn a_change_on_one_side_goes_to_the_other() {
        let base = card(&[(Field::FirstName, "Ada"), (Field::LastName, "L")]);
        let ours = base.clone().with(Field::FirstName, Value::text("Ada K."));
        let theirs = base.clone().with(Field::LastName, Value::text("Lovelace"));
        let plan = run(&base_of(&base), &ours, &theirs);
        assert_eq!(
            plan.to_crm,
            BTreeMap::from([(Field::FirstName, Value::text("Ada K."))])
        );
        assert_eq!(
            plan.to_ours,
            BTreeMap::from([(Field::LastName, Value::text("Lovelace"))])
        );
        assert!(plan.conflicts.is_empty());
        assert!(!plan.echo);
    }

    #[test]
    fn a_crm_change_to_a_field_we_own_is_written_back_over() {
        let base = card(&[(Field::Phone, "+79990000001")]);
        let theirs = card(&[(Field::Phone, "+79990000002")]);
        let plan = run(&base_of(&base), &base, &theirs);
        assert_eq!(
            plan.to_crm,
            BTreeMap::from([(Field::Phone, Value::text("+79990000001"))])
        );
        assert!(plan.to_ours.is_empty());
    }

    #[test]
    fn both_sides_changed_the_owner_decides() {
        let base = card(&[(Field::Manager, "7"), (Field::Phone, "+79990000001")]);
        let ours = card(&[(Field::Manager, "8"), (Field::Phone, "+79990000002")]);
        let theirs = card(&[(Field::Manager, "9"), (Field::Phone, "+79990000003")]);
        let plan = run(&base_of(&base), &ours, &theirs);
        assert_eq!(plan.to_ours, BTreeMap::from([(Field::Manager, Value::text("9"))]));
        assert_eq!(
            plan.to_crm,
            BTreeMap::from([(Field::Phone, Value::text("+79990000002"))])
        );
        let outcomes: Vec<_> = plan.conflicts.iter().map(|c| (c.field, c.resolution)).collect();
        assert_eq!(
            outcomes,
            vec![
                (Field::Phone, Resolution::OursWins),
                (Field::Manager, Resolution::CrmWins)
            ]
        );
    }

    #[test]
    fn a_field_a_person_owns_opens_a_task_and_leaves_both_values() {
        let base = card(&[(Field::Segment, "regular")]);
        let ours = card(&[(Field::Segment, "vip")]);
        let theirs = card(&[(Field::Segment, "churned")]);
        let plan = run(&base_of(&base), &ours, &theirs);
        assert!(plan.to_crm.is_empty() && plan.to_ours.is_empty());
        assert!(
            !plan.base.contains_key(&Field::Segment),
            "the base stays until resolved"
        );
        let c = &plan.conflicts[0];
        assert_eq!(
            (c.field, c.resolution),
            (Field::Segment, Resolution::OperatorTask)
        );
        assert_eq!(
            (c.ours.clone(), c.theirs.clone()),
            (Value::text("vip"), Value::text("churned"))
        );
        // While the task is open the field is left alone; once resolved, our value is forced.
        let pending = BTreeSet::from([Field::Segment]);
        let p = merge(
            &Ownership::default(),
            &base_of(&base),
            &Ours {
                card: Some(&ours),
                stamps: None,
            },
            &Theirs {
                card: Some(&theirs),
                modified_at: None,
            },
            &pending,
            &BTreeSet::new(),
        );
        assert!(p.is_noop());
        let p = merge(
            &Ownership::default(),
            &base_of(&base),
            &Ours {
                card: Some(&ours),
                stamps: None,
            },
            &Theirs {
                card: Some(&theirs),
                modified_at: None,
            },
            &BTreeSet::new(),
            &pending,
        );
        assert_eq!(p.to_crm, BTreeMap::from([(Field::Segment, Value::text("vip"))]));
        assert!(p.conflicts.is_empty());
    }

    #[test]
    fn newest_compares_change_times_and_ties_go_to_the_crm() {
        let base = card(&[(Field::FirstName, "Ada")]);
        let ours = card(&[(Field::FirstName, "Ours")]);
        let theirs = card(&[(Field::FirstName, "Theirs")]);
        let at = |t| {
            BTreeMap::from([(
                Field::FirstName,
                Stamp {
                    at: t,
                    source: Source::Api,
                },
            )])
        };
        let decide = |ours_at, crm_at| {
            let stamps = at(ours_at);
            merge(
                &Ownership::default(),
                &base_of(&base),
                &Ours {
                    card: Some(&ours),
                    stamps: Some(&stamps),
                },
                &Theirs {
                    card: Some(&theirs),
                    modified_at: Some(crm_at),
                },
                &BTreeSet::new(),
                &BTreeSet::new(),
            )
        };
        let later = decide(
            datetime!(2026-12-02 10:00:01 UTC),
            datetime!(2026-12-02 10:00:00 UTC),
        );
        assert_eq!(later.to_crm.get(&Field::FirstName), Some(&Value::text("Ours")));
        assert_eq!(later.conflicts[0].resolution, Resolution::OursWins);
        assert_eq!(later.conflicts[0].ours_source, Some(Source::Api));
        let tie = decide(
            datetime!(2026-12-02 10:00:00 UTC),
            datetime!(2026-12-02 10:00:00 UTC),
        );
        assert_eq!(tie.to_ours.get(&Field::FirstName), Some(&Value::text("Theirs")));
    }

    #[test]
    fn equal_values_converge_and_move_the_base() {
        let base = card(&[(Field::FirstName, "Ada")]);
        let both = card(&[(Field::FirstName, "Ada K.")]);
        let plan = run(&base_of(&base), &both, &both);
        assert!(plan.is_noop());
        assert_eq!(
            plan.base.get(&Field::FirstName),
            Some(&Value::text("Ada K.").digest())
        );
    }

    #[test]
    fn an_unknown_consent_is_no_consent_so_a_checkbox_crm_does_not_loop() {
        // Our consent is unknown; the CRM cannot store "unknown" and shows `false`.
        let ours = card(&[(Field::FirstName, "Ada")]);
        let theirs = ours.clone().with(Field::ConsentSms, Value::Flag(false));
        let plan = run(&base_of(&ours), &ours, &theirs);
        assert!(plan.is_noop(), "{plan:?}");
        // A CRM that shows `true` where we know nothing is a change of theirs, written back
        // over (we own consents) as an explicit `false`.
        let theirs = ours.clone().with(Field::ConsentEmail, Value::Flag(true));
        let plan = run(&base_of(&ours), &ours, &theirs);
        assert_eq!(
            plan.to_crm,
            BTreeMap::from([(Field::ConsentEmail, Value::Flag(false))])
        );
    }

    #[test]
    fn a_value_cleared_on_one_side_is_cleared_on_the_other() {
        let base = card(&[(Field::FirstName, "Ada"), (Field::LastName, "L")]);
        let ours = card(&[(Field::FirstName, "Ada")]);
        let plan = run(&base_of(&base), &ours, &base);
        assert_eq!(plan.to_crm, BTreeMap::from([(Field::LastName, Value::Empty)]));
    }

    #[test]
    fn a_value_of_ours_found_in_the_crm_is_ours_and_anything_else_stays_theirs() {
        let base = base_of(&card(&[(Field::FirstName, "Ada"), (Field::LastName, "K")]));
        let writing = add_writing(
            &Writing::new(),
            &digests(
                &card(&[(Field::FirstName, "Ada K."), (Field::LastName, "King")]),
                &[Field::FirstName, Field::LastName],
            ),
        );
        // The CRM holds our first name, and a last name we never wrote.
        let theirs = card(&[(Field::FirstName, "Ada K."), (Field::LastName, "Kingsley")]);
        let (merged, corrected) = with_our_writes(&base, &writing, Some(&theirs));
        assert_eq!(
            corrected,
            BTreeMap::from([(Field::FirstName, Value::text("Ada K.").digest())])
        );
        assert_eq!(
            merged.get(&Field::FirstName),
            Some(&Value::text("Ada K.").digest())
        );
        assert_eq!(merged.get(&Field::LastName), base.get(&Field::LastName));
        // No CRM record: nothing is corrected.
        assert_eq!(
            with_our_writes(&base, &writing, None),
            (base.clone(), Base::new())
        );
    }

    #[test]
    fn notes_keep_the_newest_values_of_a_field_once_each() {
        let mut writing = Writing::new();
        for v in ["a", "b", "a", "c", "d", "e"] {
            writing = add_writing(
                &writing,
                &digests(&card(&[(Field::FirstName, v)]), &[Field::FirstName]),
            );
        }
        let kept: Vec<String> = ["a", "c", "d", "e"]
            .iter()
            .map(|v| Value::text(*v).digest())
            .collect();
        assert_eq!(writing[&Field::FirstName], kept);
    }
}
