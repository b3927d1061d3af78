//! What every [`super::ClientStore`] computes the same way: a card change's new values and stamps,
//! the `crm.outgoing` and `crm.incoming` records it queues, and the conflict log's wording. Pure,
//! so the in-memory and the PostgreSQL stores cannot drift apart.

use super::model::{Card, ClientId, Field, Interaction, Source, Stamp, Task, Value};
use super::ports::{CardChange, Choice, OperatorTask, StoredCard};
use super::records::{ChangeKind, OutgoingChange, HEADER_REQUEST_ID, VERSION};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// The topic of our changes on their way to the CRM.
pub const TOPIC_OUTGOING: &str = "crm.outgoing";
/// The topic of verified webhooks on their way to the processor.
pub const TOPIC_INCOMING: &str = "crm.incoming";

/// Now, in whole microseconds: what PostgreSQL keeps, so a time read back equals the one written.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000).unwrap_or(t)
}

/// The values `change` sets: with `replace`, every field it does not give becomes empty.
pub fn change_values(change: &CardChange) -> BTreeMap<Field, Value> {
    if !change.replace {
        return change.fields.clone();
    }
    Field::ALL
        .into_iter()
        .map(|f| (f, change.fields.get(&f).cloned().unwrap_or_default()))
        .collect()
}

/// Sets `values` on `card`, stamping each field whose value changes; returns those fields.
pub fn set_fields(
    card: &mut Card,
    stamps: &mut BTreeMap<Field, Stamp>,
    values: &BTreeMap<Field, Value>,
    stamp: &Stamp,
) -> Vec<Field> {
    let mut changed = Vec::new();
    for (field, value) in values {
        if card.get(*field) != value {
            card.set(*field, value.clone());
            stamps.insert(*field, stamp.clone());
            changed.push(*field);
        }
    }
    changed
}

/// The CRM's values for fields our copy has not changed since `snapshot` was read: a value changed
/// on our side meanwhile stays (its own outbox row takes it to the CRM).
pub fn untouched_since(
    values: &BTreeMap<Field, Value>,
    snapshot: Option<&StoredCard>,
    current: Option<&StoredCard>,
) -> BTreeMap<Field, Value> {
    let value = |card: Option<&StoredCard>, f: Field| card.map(|c| c.card.get(f).clone()).unwrap_or_default();
    values
        .iter()
        .filter(|(f, _)| value(snapshot, **f) == value(current, **f))
        .map(|(f, v)| (*f, v.clone()))
        .collect()
}

/// The value an operator's choice gives the task's field, checked against the field.
pub fn chosen_value(task: &OperatorTask, choice: &Choice) -> Result<Value, super::model::Invalid> {
    let value = match choice {
        Choice::Ours => task.ours.clone(),
        Choice::Theirs => task.theirs.clone(),
        Choice::Value(v) => v.clone(),
    };
    task.field.check(&value)?;
    Ok(value)
}

/// How a resolution reads in `crm_conflict_log`.
pub fn resolution_name(choice: &Choice) -> &'static str {
    match choice {
        Choice::Ours => "resolved_ours",
        Choice::Theirs => "resolved_theirs",
        Choice::Value(_) => "resolved_value",
    }
}

/// The rule named on a resolution's `crm_conflict_log` row.
pub const RULE_OPERATOR: &str = "operator";

/// The headers of every outbox row of a change.
pub fn headers(request_id: &str) -> Vec<(String, String)> {
    vec![(HEADER_REQUEST_ID.to_owned(), request_id.to_owned())]
}

impl OutgoingChange {
    /// A card change: `fields` changed (or are re-sent), `forced` are written whatever the CRM holds.
    #[allow(clippy::too_many_arguments)]
    pub fn card(
        change_id: i64,
        client_id: &ClientId,
        card_version: i64,
        fields: Vec<Field>,
        forced: Vec<Field>,
        source: Source,
        request_id: &str,
        occurred_at: OffsetDateTime,
    ) -> Self {
        Self {
            version: VERSION,
            change_id,
            client_id: client_id.clone(),
            kind: ChangeKind::Card,
            card_version: Some(card_version),
            fields,
            forced,
            task: None,
            interaction: None,
            source,
            request_id: request_id.to_owned(),
            occurred_at,
        }
    }

    /// A task written over the API.
    pub fn task(change_id: i64, task: &Task, request_id: &str, occurred_at: OffsetDateTime) -> Self {
        Self {
            kind: ChangeKind::Task,
            card_version: None,
            task: Some(task.clone()),
            ..Self::card(
                change_id,
                &task.client_id,
                0,
                Vec::new(),
                Vec::new(),
                Source::Api,
                request_id,
                occurred_at,
            )
        }
    }

    /// An interaction recorded over the API.
    pub fn interaction(
        change_id: i64,
        interaction: &Interaction,
        request_id: &str,
        occurred_at: OffsetDateTime,
    ) -> Self {
        Self {
            kind: ChangeKind::Interaction,
            card_version: None,
            interaction: Some(interaction.clone()),
            ..Self::card(
                change_id,
                &interaction.client_id,
                0,
                Vec::new(),
                Vec::new(),
                Source::Api,
                request_id,
                occurred_at,
            )
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn change(replace: bool, fields: &[(Field, Value)]) -> CardChange {
        CardChange {
            client_id: ClientId::parse("c-1").unwrap(),
            fields: fields.iter().cloned().collect(),
            replace,
            must_exist: false,
            source: Source::Api,
            at: datetime!(2026-12-02 10:00 UTC),
            request_id: "r".into(),
        }
    }

    #[test]
    fn a_replacement_empties_what_it_does_not_give_and_a_patch_touches_only_what_it_gives() {
        let put = change_values(&change(true, &[(Field::FirstName, Value::text("Ada"))]));
        assert_eq!(put.len(), Field::ALL.len());
        assert_eq!(put[&Field::Phone], Value::Empty);
        let patch = change_values(&change(false, &[(Field::FirstName, Value::text("Ada"))]));
        assert_eq!(patch.keys().copied().collect::<Vec<_>>(), vec![Field::FirstName]);
    }

    #[test]
    fn only_fields_that_change_are_stamped() {
        let mut card = Card::default().with(Field::FirstName, Value::text("Ada"));
        let mut stamps = BTreeMap::new();
        let stamp = Stamp {
            at: datetime!(2026-12-02 10:00 UTC),
            source: Source::Api,
        };
        let values = BTreeMap::from([
            (Field::FirstName, Value::text("Ada")),
            (Field::LastName, Value::text("Lovelace")),
            (Field::Phone, Value::Empty),
        ]);
        assert_eq!(
            set_fields(&mut card, &mut stamps, &values, &stamp),
            vec![Field::LastName]
        );
        assert_eq!(stamps.keys().copied().collect::<Vec<_>>(), vec![Field::LastName]);
        assert_eq!(card.get(Field::LastName), &Value::text("Lovelace"));
    }

    #[test]
    fn records_carry_their_kind_and_the_row_id() {
        let task = Task {
            task_id: super::super::model::TaskId::parse("t-1").unwrap(),
            client_id: ClientId::parse("c-1").unwrap(),
            title: "Call".into(),
            due_at: None,
            state: super::super::model::TaskState::Open,
            assignee: None,
        };
        let json: serde_json::Value =
            serde_json::from_str(&OutgoingChange::task(7, &task, "r", now()).to_json()).unwrap();
        assert_eq!(json["change_id"], 7);
        assert_eq!(json["kind"], "task");
        assert_eq!(json["task"]["task_id"], "t-1");
        assert!(json.get("card_version").is_none());
    }
}
