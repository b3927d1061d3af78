//! Contacts, tasks and notes (interactions) of every dialect, kept in one shape: our field names,
//! the dialect's own record ids, a modification time that moves on every change, a count of the
//! writes made through the API and the `X-Request-Id` of each. The dialect modules translate
//! their wire shapes to and from these records; [`control`] reads and edits them as a CRM user
//! would, and every change to a contact or task is announced by a webhook ([`crate::webhooks`]).

pub(crate) mod control;
mod records;

use crate::{Dialect, Sim};
use axum::http::HeaderMap;
pub(crate) use records::Records;
use serde_json::{Map, Value};
use std::sync::{MutexGuard, PoisonError};
use time::{Duration, OffsetDateTime};

/// Most request ids kept per record (the latest ones).
pub(crate) const MAX_REQUEST_IDS: usize = 100;
/// The longest `X-Request-Id` recorded; a longer or malformed one is recorded as absent.
pub(crate) const MAX_REQUEST_ID_LEN: usize = 128;
/// The longest text value a contact or task field takes.
pub(crate) const MAX_FIELD_BYTES: usize = 1024;
/// The longest note text.
pub(crate) const MAX_NOTE_BYTES: usize = 20_000;

/// The kind of record a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entity {
    Contact,
    Task,
}

/// One change to a contact or task: what a webhook announces.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub entity: Entity,
    pub created: bool,
    pub crm_id: String,
    pub external_id: Option<String>,
    /// The record's modification time after the change.
    pub at: OffsetDateTime,
}

/// Who makes a write: crm-sync through the API (with its request id, if any) or a CRM user.
#[derive(Debug, Clone)]
pub(crate) enum Writer {
    Api(Option<String>),
    User,
}

/// The `X-Request-Id` of a request, if it is well formed: 1 to 128 of `[A-Za-z0-9._:-]`.
pub(crate) fn request_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("x-request-id")?.to_str().ok()?;
    let ok = (1..=MAX_REQUEST_ID_LEN).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    ok.then(|| v.to_owned())
}

/// When a record was made and changed, how often the API wrote it, and with which request ids.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub writes: u64,
    pub request_ids: Vec<Option<String>>,
}

impl Meta {
    fn new(tick: Duration, writer: &Writer) -> Self {
        let now = truncate(OffsetDateTime::now_utc(), tick);
        let mut meta = Self {
            created_at: now,
            updated_at: now,
            writes: 0,
            request_ids: Vec::new(),
        };
        meta.record(writer);
        meta
    }

    /// Moves the modification time (strictly later than before, in steps of `tick`, so that
    /// two changes within one second still differ where the vendor counts in seconds) and
    /// accounts an API write.
    fn touch(&mut self, tick: Duration, writer: &Writer) {
        let now = truncate(OffsetDateTime::now_utc(), tick);
        self.updated_at = if now > self.updated_at {
            now
        } else {
            self.updated_at + tick
        };
        self.record(writer);
    }

    fn record(&mut self, writer: &Writer) {
        if let Writer::Api(rid) = writer {
            self.writes += 1;
            if self.request_ids.len() >= MAX_REQUEST_IDS {
                self.request_ids.remove(0);
            }
            self.request_ids.push(rid.clone());
        }
    }
}

fn truncate(t: OffsetDateTime, tick: Duration) -> OffsetDateTime {
    let unit = tick.whole_nanoseconds().max(1);
    let nanos = i128::from(t.nanosecond());
    t.replace_nanosecond((nanos - nanos % unit) as u32).unwrap_or(t)
}

/// The fields of a contact, in our terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ContactFields {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub manager: Option<String>,
    pub segment: Option<String>,
    pub consent_sms: Option<bool>,
    pub consent_email: Option<bool>,
}

/// Changes to a contact: `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContactPatch {
    pub external_id: Option<Option<String>>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub manager: Option<Option<String>>,
    pub segment: Option<Option<String>>,
    pub consent_sms: Option<Option<bool>>,
    pub consent_email: Option<Option<bool>>,
    /// Dialect-specific fields (Bitrix24 `ORIGINATOR_ID`); `null` removes one.
    pub extra: Map<String, Value>,
}

fn set<T>(slot: &mut Option<T>, change: Option<Option<T>>) {
    if let Some(v) = change {
        *slot = v;
    }
}

fn merge_extra(extra: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (k, v) in patch {
        if v.is_null() {
            extra.remove(&k);
        } else {
            extra.insert(k, v);
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Contact {
    pub crm_id: String,
    pub external_id: Option<String>,
    pub fields: ContactFields,
    pub extra: Map<String, Value>,
    pub meta: Meta,
}

impl ContactPatch {
    fn apply(self, c: &mut Contact) {
        let f = &mut c.fields;
        set(&mut c.external_id, self.external_id);
        set(&mut f.first_name, self.first_name);
        set(&mut f.last_name, self.last_name);
        set(&mut f.phone, self.phone);
        set(&mut f.email, self.email);
        set(&mut f.manager, self.manager);
        set(&mut f.segment, self.segment);
        set(&mut f.consent_sms, self.consent_sms);
        set(&mut f.consent_email, self.consent_email);
        merge_extra(&mut c.extra, self.extra);
    }
}

/// The state of a task in our terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum TaskState {
    #[default]
    Open,
    Done,
    Cancelled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Open => "open",
            TaskState::Done => "done",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [TaskState::Open, TaskState::Done, TaskState::Cancelled]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub crm_id: String,
    pub external_id: Option<String>,
    /// The CRM id of the contact the task belongs to.
    pub contact: Option<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub due_at: Option<OffsetDateTime>,
    pub state: TaskState,
    pub assignee: Option<String>,
    /// Dialect-specific fields (the Salesforce `Status` as sent, the Kommo `result`).
    pub extra: Map<String, Value>,
    pub meta: Meta,
}

/// Changes to a task, as [`ContactPatch`].
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskPatch {
    pub external_id: Option<Option<String>>,
    pub contact: Option<Option<String>>,
    pub title: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub due_at: Option<Option<OffsetDateTime>>,
    pub state: Option<TaskState>,
    pub assignee: Option<Option<String>>,
    pub extra: Map<String, Value>,
}

impl TaskPatch {
    fn apply(self, t: &mut Task) {
        set(&mut t.external_id, self.external_id);
        set(&mut t.contact, self.contact);
        set(&mut t.title, self.title);
        set(&mut t.description, self.description);
        set(&mut t.due_at, self.due_at);
        if let Some(s) = self.state {
            t.state = s;
        }
        set(&mut t.assignee, self.assignee);
        merge_extra(&mut t.extra, self.extra);
    }
}

/// An interaction on a contact's timeline: a comment, a note, a completed activity.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub crm_id: String,
    pub external_id: Option<String>,
    pub contact: Option<String>,
    pub text: String,
    /// Dialect-specific fields (the generic `channel`, `direction`, `at`; the Salesforce
    /// `Subject`, `Status`, `ActivityDate`).
    pub extra: Map<String, Value>,
    pub meta: Meta,
}

impl records::Row for Contact {
    fn external_id(&self) -> Option<&str> {
        self.external_id.as_deref()
    }
}

impl records::Row for Task {
    fn external_id(&self) -> Option<&str> {
        self.external_id.as_deref()
    }
}

impl records::Row for Note {
    fn external_id(&self) -> Option<&str> {
        self.external_id.as_deref()
    }
}

/// How a dialect numbers its records.
struct Numbering {
    contact: (u64, fn(u64) -> String),
    task: (u64, fn(u64) -> String),
    note: (u64, fn(u64) -> String),
    /// The unit of the modification time: a second where the vendor counts in seconds.
    tick: Duration,
    /// External ids match case-insensitively (Salesforce).
    fold: bool,
}

fn numbering(d: Dialect) -> Numbering {
    let plain: fn(u64) -> String = |n| n.to_string();
    match d {
        Dialect::Generic => Numbering {
            contact: (1, |n| format!("ct-{n}")),
            task: (1, |n| format!("tk-{n}")),
            note: (1, |n| format!("in-{n}")),
            tick: Duration::milliseconds(1),
            fold: false,
        },
        Dialect::Bitrix24 => Numbering {
            contact: (1, plain),
            task: (9001, plain),
            note: (901, plain),
            tick: Duration::seconds(1),
            fold: false,
        },
        Dialect::Salesforce => Numbering {
            contact: (1, |n| format!("003SIM{n:09}AAA")),
            task: (1, |n| format!("00TSIM0{n:08}AAA")),
            note: (1, |n| format!("00TSIM1{n:08}AAA")),
            tick: Duration::milliseconds(1),
            fold: true,
        },
        Dialect::Kommo => Numbering {
            contact: (30_000_001, plain),
            task: (40_000_001, plain),
            note: (50_000_001, plain),
            tick: Duration::seconds(1),
            fold: false,
        },
    }
}

/// The contacts, tasks and notes of one dialect.
pub(crate) struct People {
    pub contacts: Records<Contact>,
    pub tasks: Records<Task>,
    pub notes: Records<Note>,
    tick: Duration,
}

impl People {
    fn new(d: Dialect) -> Self {
        let n = numbering(d);
        Self {
            contacts: Records::new(n.contact.0, n.contact.1, n.fold),
            tasks: Records::new(n.task.0, n.task.1, n.fold),
            notes: Records::new(n.note.0, n.note.1, n.fold),
            tick: n.tick,
        }
    }

    /// The oldest contact with this external id.
    pub fn contact_by_external(&self, ext: &str) -> Option<&Contact> {
        self.contacts.find(ext).into_iter().next()
    }

    pub fn create_contact(&mut self, patch: ContactPatch, writer: &Writer) -> Change {
        let meta = Meta::new(self.tick, writer);
        let c = self.contacts.insert(|crm_id| {
            let mut c = Contact {
                crm_id,
                external_id: None,
                fields: ContactFields::default(),
                extra: Map::new(),
                meta,
            };
            patch.apply(&mut c);
            c
        });
        change(
            Entity::Contact,
            true,
            &c.crm_id,
            c.external_id.clone(),
            c.meta.updated_at,
        )
    }

    /// `None` when there is no such contact.
    pub fn update_contact(&mut self, crm_id: &str, patch: ContactPatch, writer: &Writer) -> Option<Change> {
        let tick = self.tick;
        let c = self.contacts.update(crm_id, |c| {
            patch.apply(c);
            c.meta.touch(tick, writer);
        })?;
        Some(change(
            Entity::Contact,
            false,
            &c.crm_id,
            c.external_id.clone(),
            c.meta.updated_at,
        ))
    }

    pub fn create_task(&mut self, patch: TaskPatch, writer: &Writer) -> Change {
        let meta = Meta::new(self.tick, writer);
        let t = self.tasks.insert(|crm_id| {
            let mut t = Task {
                crm_id,
                external_id: None,
                contact: None,
                title: None,
                description: None,
                due_at: None,
                state: TaskState::Open,
                assignee: None,
                extra: Map::new(),
                meta,
            };
            patch.apply(&mut t);
            t
        });
        change(
            Entity::Task,
            true,
            &t.crm_id,
            t.external_id.clone(),
            t.meta.updated_at,
        )
    }

    pub fn update_task(&mut self, crm_id: &str, patch: TaskPatch, writer: &Writer) -> Option<Change> {
        let tick = self.tick;
        let t = self.tasks.update(crm_id, |t| {
            patch.apply(t);
            t.meta.touch(tick, writer);
        })?;
        Some(change(
            Entity::Task,
            false,
            &t.crm_id,
            t.external_id.clone(),
            t.meta.updated_at,
        ))
    }

    /// Adds a note, or replaces the text and fields of `existing`; returns its CRM id and
    /// whether it was created.
    pub fn put_note(
        &mut self,
        existing: Option<&str>,
        external_id: Option<String>,
        contact: Option<String>,
        text: String,
        extra: Map<String, Value>,
        writer: &Writer,
    ) -> (String, bool) {
        let tick = self.tick;
        if let Some(id) = existing {
            if let Some(n) = self.notes.update(id, |n| {
                n.contact = contact.clone();
                n.text = text.clone();
                merge_extra(&mut n.extra, extra.clone());
                n.meta.touch(tick, writer);
            }) {
                return (n.crm_id.clone(), false);
            }
        }
        let meta = Meta::new(tick, writer);
        let n = self.notes.insert(|crm_id| Note {
            crm_id,
            external_id,
            contact,
            text,
            extra,
            meta,
        });
        (n.crm_id.clone(), true)
    }
}

fn change(
    entity: Entity,
    created: bool,
    crm_id: &str,
    external_id: Option<String>,
    at: OffsetDateTime,
) -> Change {
    Change {
        entity,
        created,
        crm_id: crm_id.to_owned(),
        external_id,
        at,
    }
}

/// The people of every dialect.
pub(crate) struct Stores {
    generic: People,
    bitrix24: People,
    salesforce: People,
    kommo: People,
}

impl Stores {
    pub fn new() -> Self {
        Self {
            generic: People::new(Dialect::Generic),
            bitrix24: People::new(Dialect::Bitrix24),
            salesforce: People::new(Dialect::Salesforce),
            kommo: People::new(Dialect::Kommo),
        }
    }

    pub fn of(&mut self, d: Dialect) -> &mut People {
        match d {
            Dialect::Generic => &mut self.generic,
            Dialect::Bitrix24 => &mut self.bitrix24,
            Dialect::Salesforce => &mut self.salesforce,
            Dialect::Kommo => &mut self.kommo,
        }
    }
}

impl Sim {
    pub(crate) fn people(&self) -> MutexGuard<'_, Stores> {
        self.people.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the webhooks of these changes, if the dialect has a target; never waits for them.
    pub(crate) fn announce(&self, d: Dialect, changes: impl IntoIterator<Item = Change>) {
        for c in changes {
            self.hooks.announce(d, &c);
        }
    }
}

/// RFC 3339 in UTC with milliseconds: `2026-12-02T10:00:00.000Z`.
pub(crate) fn rfc3339_ms(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC).format(&fmt).unwrap_or_default()
}

/// An RFC 3339 date-time, in UTC.
pub(crate) fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.to_offset(time::UtcOffset::UTC))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_modification_time_moves_on_every_change_even_within_one_second() {
        let mut p = People::new(Dialect::Kommo);
        let api = Writer::Api(Some("r-1".into()));
        let created = p.create_contact(ContactPatch::default(), &api);
        let mut last = created.at;
        for _ in 0..3 {
            let c = p
                .update_contact(&created.crm_id, ContactPatch::default(), &Writer::User)
                .unwrap();
            assert!(c.at > last, "{} then {}", last, c.at);
            assert_eq!(c.at.nanosecond(), 0, "Kommo counts in seconds");
            last = c.at;
        }
        let c = p.contacts.get(&created.crm_id).unwrap();
        assert_eq!(c.meta.writes, 1, "edits by a CRM user are not API writes");
        assert_eq!(c.meta.request_ids, vec![Some("r-1".to_owned())]);
    }

    #[test]
    fn request_ids_are_recorded_only_when_well_formed() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "req-1:a.b_c".parse().unwrap());
        assert_eq!(request_id(&h).as_deref(), Some("req-1:a.b_c"));
        h.insert("x-request-id", "a b".parse().unwrap());
        assert_eq!(request_id(&h), None);
        h.insert("x-request-id", "r".repeat(129).parse().unwrap());
        assert_eq!(request_id(&h), None);
    }
}
