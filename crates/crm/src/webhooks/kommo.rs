//! Kommo's webhooks: `POST /webhooks/kommo/{path secret}`, form-encoded with PHP-style keys:
//!
//! ```text
//! contacts[update][0][id]=456&contacts[update][0][last_modified]=1764669600
//!   &contacts[update][0][account_id]=7039099&account[subdomain]=acme&account[id]=7039099
//! ```
//!
//! Kommo signs nothing, so the credential is the secret path segment of the URL Kommo was given,
//! and the body's `account[id]` (and every entry's `account_id`) must be the configured account.
//! `contacts[add|update][i]` name contacts, `tasks[add|update][i]` tasks; other groups and events
//! (leads, notes, deletions, ...) are verified and acknowledged with no hints. One delivery is
//! `{account id}:{entity}:{event}:{id}:{last_modified}`.

use super::{check_path, check_path_secret, check_size, crm_id, delivery_id, malformed, unix_time};
use super::{Form, Hint, InboundRequest, Repeated, WebhookRefusal, MAX_ENTRIES};
use backbone_sync::clients::Entity;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `webhooks.kommo`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KommoWebhook {
    /// The last path segment of the URL given to Kommo (`/webhooks/kommo/{path_secret}`).
    pub path_secret: SecretString,
    /// The account's numeric id (`account[id]` in every webhook).
    pub account_id: String,
}

pub(super) struct Verifier {
    path_secret: SecretString,
    account_id: String,
}

impl Verifier {
    pub fn new(cfg: &KommoWebhook) -> Result<Self, String> {
        check_path_secret("webhooks.kommo.path_secret", &cfg.path_secret)?;
        let id = &cfg.account_id;
        if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err("webhooks.kommo.account_id: not a Kommo account id (digits)".to_owned());
        }
        Ok(Self {
            path_secret: cfg.path_secret.clone(),
            account_id: cfg.account_id.clone(),
        })
    }

    pub fn verify(
        &self,
        path_secret: Option<&str>,
        req: &InboundRequest<'_>,
    ) -> Result<Vec<Hint>, WebhookRefusal> {
        check_path(path_secret, &self.path_secret)?;
        check_size(req.body)?;
        let form = Form::parse(req.body);
        match form.one("account[id]") {
            Ok(Some(id)) if id == self.account_id => {}
            Ok(_) | Err(Repeated) => return Err(WebhookRefusal::Forbidden),
        }
        parse(&form, &self.account_id)
    }
}

/// `contacts` or `tasks`, `add` or `update`, and the entry's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    group: Group,
    event: Event,
    index: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    Contacts,
    Tasks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Add,
    Update,
}

impl Group {
    fn name(self) -> &'static str {
        match self {
            Group::Contacts => "contacts",
            Group::Tasks => "tasks",
        }
    }

    fn entity(self) -> Entity {
        match self {
            Group::Contacts => Entity::Contact,
            Group::Tasks => Entity::Task,
        }
    }
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Add => "add",
            Event::Update => "update",
        }
    }
}

impl Slot {
    /// The key of one of this entry's fields, for messages.
    fn key(self, field: &str) -> String {
        format!(
            "{}[{}][{}][{field}]",
            self.group.name(),
            self.event.name(),
            self.index
        )
    }
}

/// The fields read of one entry; the rest (names, custom fields, ...) the processor re-reads.
#[derive(Default)]
struct Entry<'a> {
    id: Option<&'a str>,
    last_modified: Option<&'a str>,
    account_id: Option<&'a str>,
}

/// The bracketed segments after the first `[` of a key: `update][0][id]` → `update`, `0`, `id`;
/// `None` when the brackets do not pair up.
fn segments(mut rest: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    loop {
        let (seg, after) = rest.split_once(']')?;
        if seg.contains('[') {
            return None;
        }
        out.push(seg);
        if after.is_empty() {
            return Some(out);
        }
        rest = after.strip_prefix('[')?;
    }
}

/// Reads a verified form of the configured `account`.
fn parse(form: &Form, account: &str) -> Result<Vec<Hint>, WebhookRefusal> {
    let mut entries: BTreeMap<Slot, Entry<'_>> = BTreeMap::new();
    for (key, value) in &form.pairs {
        let Some((name, rest)) = key.split_once('[') else {
            continue;
        };
        let group = match name {
            "contacts" => Group::Contacts,
            "tasks" => Group::Tasks,
            _ => continue,
        };
        let shape = || {
            malformed(
                group.name(),
                "a key is not of the form group[event][index][field]",
            )
        };
        let segs = segments(rest).ok_or_else(shape)?;
        let [event, index, field, deeper @ ..] = segs.as_slice() else {
            return Err(shape());
        };
        let event = match *event {
            "add" => Event::Add,
            "update" => Event::Update,
            _ => continue,
        };
        let index = (index.len() <= 9 && !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
            .then(|| index.parse::<u32>().ok())
            .flatten()
            .ok_or_else(|| malformed(group.name(), "an entry index is not a number"))?;
        let slot = Slot { group, event, index };
        if !entries.contains_key(&slot) && entries.len() >= MAX_ENTRIES {
            return Err(malformed("body", "more than 100 entries"));
        }
        let entry = entries.entry(slot).or_default();
        let place = match (*field, deeper.is_empty()) {
            ("id", true) => &mut entry.id,
            ("last_modified", true) => &mut entry.last_modified,
            ("account_id", true) => &mut entry.account_id,
            _ => continue,
        };
        if place.replace(value.as_str()).is_some() {
            return Err(malformed(&slot.key(field), "given more than once"));
        }
    }
    entries
        .into_iter()
        .map(|(slot, entry)| hint(slot, &entry, account))
        .collect()
}

fn hint(slot: Slot, entry: &Entry<'_>, account: &str) -> Result<Hint, WebhookRefusal> {
    if entry.account_id.is_some_and(|a| a != account) {
        return Err(WebhookRefusal::Forbidden);
    }
    let (id_key, modified_key) = (slot.key("id"), slot.key("last_modified"));
    let id = entry.id.ok_or_else(|| malformed(&id_key, "missing"))?;
    let id = crm_id(&id_key, id)?;
    let modified = entry
        .last_modified
        .ok_or_else(|| malformed(&modified_key, "missing"))?;
    let (modified, at) = unix_time(&modified_key, modified)?;
    let (entity, event) = (slot.group.entity(), slot.event.name());
    Ok(Hint {
        vendor: "kommo".to_owned(),
        delivery_id: delivery_id(
            "delivery id",
            format!("{account}:{}:{event}:{id}:{modified}", entity.as_str()),
        )?,
        entity,
        crm_id: id,
        client_id: None,
        event: format!("{}.{event}", slot.group.name()),
        occurred_at: Some(at),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_malformed, request};
    use super::*;
    use reqwest::header::HeaderMap;

    const PATH: &str = "kommo-path-secret-0123456789";
    const ACCOUNT: &str = "account[subdomain]=acme&account[id]=7039099";

    fn verifier() -> Verifier {
        Verifier::new(&KommoWebhook {
            path_secret: SecretString::from(PATH),
            account_id: "7039099".to_owned(),
        })
        .expect("valid")
    }

    fn verify_at(path: Option<&str>, body: &str) -> Result<Vec<Hint>, WebhookRefusal> {
        let headers = HeaderMap::new();
        verifier().verify(path, &request("/webhooks/kommo/x", &headers, body.as_bytes()))
    }

    fn verify(body: &str) -> Result<Vec<Hint>, WebhookRefusal> {
        verify_at(Some(PATH), body)
    }

    fn entry(group: &str, event: &str, i: usize, id: &str) -> String {
        format!(
            "{group}[{event}][{i}][id]={id}&{group}[{event}][{i}][last_modified]=1764669600\
             &{group}[{event}][{i}][account_id]=7039099&{group}[{event}][{i}][name]=Anna&"
        )
    }

    #[test]
    fn every_contact_and_task_entry_gives_a_hint() {
        let body = format!(
            "{}{}{}{ACCOUNT}",
            entry("tasks", "add", 0, "77"),
            entry("contacts", "update", 1, "457"),
            entry("contacts", "update", 0, "456"),
        );
        let hints = verify(&body).expect("verified");
        let got: Vec<_> = hints
            .iter()
            .map(|h| {
                (
                    h.entity,
                    h.crm_id.as_str(),
                    h.event.as_str(),
                    h.delivery_id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    Entity::Contact,
                    "456",
                    "contacts.update",
                    "7039099:contact:update:456:1764669600"
                ),
                (
                    Entity::Contact,
                    "457",
                    "contacts.update",
                    "7039099:contact:update:457:1764669600"
                ),
                (Entity::Task, "77", "tasks.add", "7039099:task:add:77:1764669600"),
            ]
        );
        assert!(hints.iter().all(|h| h.vendor == "kommo" && h.client_id.is_none()));
        assert_eq!(
            hints[0].occurred_at,
            Some(time::macros::datetime!(2025-12-02 10:00:00 UTC))
        );
    }

    #[test]
    fn percent_encoded_keys_and_nested_fields_are_read() {
        let body =
            "contacts%5Badd%5D%5B0%5D%5Bid%5D=456&contacts%5Badd%5D%5B0%5D%5Blast_modified%5D=1764669600\
                    &contacts[add][0][custom_fields][0][values][0][value]=c-1&account%5Bid%5D=7039099";
        let hints = verify(body).expect("verified");
        assert_eq!(hints.len(), 1);
        assert_eq!(
            (hints[0].crm_id.as_str(), hints[0].event.as_str()),
            ("456", "contacts.add")
        );
    }

    #[test]
    fn groups_and_events_not_synced_give_no_hints() {
        let body = format!(
            "leads[status][0][id]=1&leads[status][0][status_id]=142&contacts[delete][0][id]=3\
             &contacts[note][0][note][text]=hi&{ACCOUNT}"
        );
        assert_eq!(verify(&body), Ok(Vec::new()));
        assert_eq!(verify(ACCOUNT), Ok(Vec::new()));
    }

    #[test]
    fn no_path_secret_is_unauthenticated_and_a_wrong_one_forbidden() {
        let body = format!("{}{ACCOUNT}", entry("contacts", "update", 0, "456"));
        assert_eq!(verify_at(None, &body), Err(WebhookRefusal::Unauthenticated));
        assert_eq!(verify_at(Some(""), &body), Err(WebhookRefusal::Unauthenticated));
        for wrong in [
            "kommo-path-secret-012345678",
            "kommo-path-secret-01234567890",
            "x",
        ] {
            assert_eq!(verify_at(Some(wrong), &body), Err(WebhookRefusal::Forbidden));
        }
        // Before anything of the body is read.
        assert_eq!(
            verify_at(Some("x"), "\u{0}garbage"),
            Err(WebhookRefusal::Forbidden)
        );
        let huge = "x".repeat(super::super::MAX_WEBHOOK_BYTES + 1);
        assert_eq!(verify_at(None, &huge), Err(WebhookRefusal::Unauthenticated));
    }

    #[test]
    fn another_account_is_forbidden() {
        let contact = entry("contacts", "update", 0, "456");
        for account in [
            "",
            "account[id]=7039098",
            "account[id]=7039099&account[id]=7039099",
            "account[id]=",
        ] {
            assert_eq!(
                verify(&format!("{contact}{account}")),
                Err(WebhookRefusal::Forbidden),
                "{account}"
            );
        }
        let other_entry = contact.replace("[account_id]=7039099", "[account_id]=1");
        assert_eq!(
            verify(&format!("{other_entry}{ACCOUNT}")),
            Err(WebhookRefusal::Forbidden)
        );
    }

    #[test]
    fn at_most_a_hundred_entries() {
        let body = |n: usize| {
            let mut b: String = (0..n)
                .map(|i| entry("contacts", "update", i, &format!("{}", 1000 + i)))
                .collect();
            b.push_str(ACCOUNT);
            b
        };
        assert_eq!(verify(&body(MAX_ENTRIES)).expect("a hundred").len(), MAX_ENTRIES);
        assert_malformed(verify(&body(MAX_ENTRIES + 1)), "more than 100 entries", &[]);
        let mixed: String = format!(
            "{}{}{ACCOUNT}",
            (0..50)
                .map(|i| entry("contacts", "add", i, "1"))
                .collect::<String>(),
            (0..51)
                .map(|i| entry("tasks", "update", i, "2"))
                .collect::<String>()
        );
        assert_malformed(verify(&mixed), "more than 100 entries", &[]);
    }

    #[test]
    fn a_verified_body_of_another_shape_is_malformed_without_its_values() {
        let secret_value = "VALUE-NOT-TO-ECHO";
        let lm = "contacts[update][0][last_modified]=1764669600";
        let cases = [
            (format!("{lm}&{ACCOUNT}"), "contacts[update][0][id]"),
            (
                "contacts[update][0][id]=456&".to_owned() + ACCOUNT,
                "contacts[update][0][last_modified]",
            ),
            (
                format!("contacts[update][0][id]={secret_value}+x&{lm}&{ACCOUNT}"),
                "contacts[update][0][id]",
            ),
            (
                format!("contacts[update][0][id]=1&contacts[update][0][id]=2&{lm}&{ACCOUNT}"),
                "contacts[update][0][id]",
            ),
            (
                format!(
                    "contacts[update][0][id]=1&contacts[update][0][last_modified]={secret_value}&{ACCOUNT}"
                ),
                "contacts[update][0][last_modified]",
            ),
            (
                format!("contacts[update][{secret_value}][id]=1&{ACCOUNT}"),
                "contacts",
            ),
            (
                format!("contacts[update][99999999999][id]=1&{ACCOUNT}"),
                "contacts",
            ),
            (format!("tasks[update]={secret_value}&{ACCOUNT}"), "tasks"),
            (format!("tasks[update][0]]id[=1&{ACCOUNT}"), "tasks"),
        ];
        for (body, part) in cases {
            assert_malformed(verify(&body), part, &[secret_value, PATH]);
        }
    }

    #[test]
    fn the_configuration_needs_a_long_url_safe_secret_and_a_numeric_account() {
        let cfg = |secret: &str, account: &str| KommoWebhook {
            path_secret: SecretString::from(secret),
            account_id: account.to_owned(),
        };
        assert!(Verifier::new(&cfg(PATH, "7039099")).is_ok());
        assert!(Verifier::new(&cfg("short-secret", "7039099")).is_err());
        assert!(Verifier::new(&cfg("kommo path secret 0123456789", "7039099")).is_err());
        assert!(Verifier::new(&cfg("kommo%2Fpath-secret-0123456789", "7039099")).is_err());
        assert!(Verifier::new(&cfg(PATH, "acme")).is_err());
        assert!(Verifier::new(&cfg(PATH, "")).is_err());
    }

    #[test]
    fn key_segments_pair_up() {
        assert_eq!(segments("update][0][id]"), Some(vec!["update", "0", "id"]));
        assert_eq!(segments("a]"), Some(vec!["a"]));
        for bad in ["", "a", "a]b", "a][b", "a[b]", "a]]"] {
            assert_eq!(segments(bad), None, "{bad}");
        }
    }
}
