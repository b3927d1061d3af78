//! The merge's rules, one test each.

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
