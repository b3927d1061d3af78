//! What every vendor's client-card code shares: taking the CRM's values into a [`Card`] within
//! our bounds, the one-line rendering of an interaction for vendors that keep history as text,
//! ids in URL paths, and refusals that never repeat a vendor's text (it may quote a phone or an
//! address we sent).

use backbone_sync::clients::model::MAX_TITLE_BYTES;
use backbone_sync::clients::{Card, ClientId, Direction, Field, Interaction, InteractionChannel, Value};
use backbone_sync::ports::CrmError;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Puts a value the CRM returned into the card. Blank text is nothing known; a value outside
/// our bounds (a phone not in E.164, a name too long) is left out of the card and reported by
/// field name only, never by value.
pub(crate) fn take(card: &mut Card, field: Field, value: Value, vendor: &'static str) {
    let value = match value {
        Value::Text(t) if t.trim().is_empty() => return,
        other => other,
    };
    match field.check(&value) {
        Ok(()) => card.set(field, value),
        Err(e) => tracing::warn!(
            vendor,
            field = field.as_str(),
            reason = %e.reason,
            "a CRM value does not fit the field: left out of the card"
        ),
    }
}

/// A task title the CRM returned, within our bounds (1..=255 bytes, no control characters);
/// otherwise none, reported by name only.
pub(crate) fn task_title(title: Option<String>, vendor: &'static str) -> Option<String> {
    let t = title?;
    if t.trim().is_empty() {
        return None;
    }
    if t.len() > MAX_TITLE_BYTES || t.chars().any(char::is_control) {
        tracing::warn!(vendor, field = "title", "a CRM task title does not fit: left out");
        return None;
    }
    Some(t)
}

/// Text the CRM may hold as a string or a number (user ids), or not at all.
pub(crate) fn text_of(v: Option<&serde_json::Value>) -> Value {
    match v {
        Some(serde_json::Value::String(s)) => Value::Text(s.clone()),
        Some(serde_json::Value::Number(n)) => Value::Text(n.to_string()),
        _ => Value::Empty,
    }
}

/// Our client id from the CRM's external-id field; a value that is not a valid client id is
/// no client of ours.
pub(crate) fn client_id_of(raw: Option<&str>) -> Option<ClientId> {
    raw.and_then(|s| ClientId::parse(s).ok())
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

pub(crate) fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

pub(crate) fn channel(c: InteractionChannel) -> &'static str {
    match c {
        InteractionChannel::Call => "call",
        InteractionChannel::Email => "email",
        InteractionChannel::Sms => "sms",
        InteractionChannel::Chat => "chat",
        InteractionChannel::Visit => "visit",
        InteractionChannel::Other => "other",
    }
}

pub(crate) fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

/// `[<channel>/<direction> <at>] <text>`: a Bitrix24 timeline comment, a Kommo note.
pub(crate) fn interaction_line(i: &Interaction) -> String {
    format!(
        "[{}/{} {}] {}",
        channel(i.channel),
        direction(i.direction),
        rfc3339(i.at),
        i.text
    )
}

/// [`interaction_line`] with our interaction id at its end, for CRMs that keep no external id on
/// notes: a create repeated after a crash finds the first one by it.
pub(crate) fn marked_interaction_line(i: &Interaction) -> String {
    format!("{}{}", interaction_line(i), ref_marker(i.interaction_id.as_str()))
}

/// Whether a note's text is the one [`marked_interaction_line`] made for `i`.
pub(crate) fn marks_interaction(text: &str, i: &Interaction) -> bool {
    text.trim_end().ends_with(&ref_marker(i.interaction_id.as_str()))
}

/// ` [ref ID]`: our id at the end of a text the CRM shows.
pub(crate) fn ref_marker(id: &str) -> String {
    format!(" [ref {id}]")
}

/// A text without its trailing [`ref_marker`], and the id the marker named.
pub(crate) fn split_ref(text: &str) -> (&str, Option<&str>) {
    let t = text.trim_end();
    if let Some(open) = t.rfind(" [ref ") {
        if let Some(id) = t[open + 6..].strip_suffix(']') {
            if !id.is_empty() && !id.contains(char::is_whitespace) {
                return (&t[..open], Some(id));
            }
        }
    }
    (text, None)
}

/// A path with each of `segments` percent-encoded as one segment (an id may hold `/` or `?`).
pub(crate) fn path(prefix: &str, segments: &[&str]) -> String {
    let mut url = match reqwest::Url::parse("http://crm/") {
        Ok(u) => u,
        Err(_) => return prefix.to_owned(),
    };
    url.set_path(prefix);
    if let Ok(mut s) = url.path_segments_mut() {
        s.pop_if_empty();
        for seg in segments {
            s.push(seg);
        }
    }
    url.path().to_owned()
}

/// A vendor refused a call: classified by HTTP status, described by `what` and the vendor's
/// error code only.
pub(crate) fn refused(
    status: u16,
    retry_after: Option<std::time::Duration>,
    what: &str,
    code: &str,
) -> CrmError {
    let code = crate::wire::clip(code);
    let sep = if code.is_empty() { "" } else { " " };
    CrmError::from_status(status, retry_after, format!("{what}: HTTP {status}{sep}{code}"))
}

pub(crate) fn fresh_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A user id the vendor keeps as a number (Bitrix24 `ASSIGNED_BY_ID`, Kommo
/// `responsible_user_id`).
pub(crate) fn numeric_user(field: &str, raw: &str) -> Result<u64, CrmError> {
    raw.parse::<u64>()
        .map_err(|_| CrmError::permanent(format!("{field}: the CRM keeps user ids as numbers")))
}

/// A CRM record id the vendor keeps as a number.
pub(crate) fn numeric_id(what: &str, raw: &str) -> Result<u64, CrmError> {
    raw.parse::<u64>()
        .map_err(|_| CrmError::permanent(format!("{what}: the CRM's ids are numbers")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_out_of_bounds_stay_out_of_the_card() {
        let mut card = Card::default();
        take(&mut card, Field::Phone, Value::text("8 999 123"), "test");
        take(&mut card, Field::FirstName, Value::text("  "), "test");
        take(&mut card, Field::Email, Value::text("ada@example.com"), "test");
        take(&mut card, Field::ConsentSms, Value::text("Y"), "test");
        assert_eq!(card.get(Field::Phone), &Value::Empty);
        assert_eq!(card.get(Field::FirstName), &Value::Empty);
        assert_eq!(card.get(Field::ConsentSms), &Value::Empty);
        assert_eq!(card.get(Field::Email), &Value::text("ada@example.com"));
    }

    #[test]
    fn ids_are_one_path_segment_each() {
        assert_eq!(path("/api/v1/contacts", &["a/b?c"]), "/api/v1/contacts/a%2Fb%3Fc");
        assert_eq!(
            path("/api/v1/contacts/by-id", &["82"]),
            "/api/v1/contacts/by-id/82"
        );
    }

    #[test]
    fn an_interaction_is_one_line_with_its_channel_direction_and_time() {
        let i = Interaction {
            interaction_id: backbone_sync::clients::InteractionId::parse("i-1").unwrap(),
            client_id: ClientId::parse("c-1").unwrap(),
            channel: InteractionChannel::Call,
            direction: Direction::Inbound,
            text: "asked about delivery".into(),
            at: OffsetDateTime::from_unix_timestamp(1_796_205_600).unwrap(),
        };
        assert_eq!(
            interaction_line(&i),
            "[call/inbound 2026-12-02T10:00:00Z] asked about delivery"
        );
    }

    #[test]
    fn refusals_carry_the_code_not_the_body() {
        let e = refused(400, None, "write contact", "INVALID_EMAIL_ADDRESS");
        assert_eq!(e.message, "write contact: HTTP 400 INVALID_EMAIL_ADDRESS");
        assert!(!e.is_transient());
        assert!(refused(503, None, "read", "").is_transient());
    }
}
