//! Bitrix24's event handlers: `POST /webhooks/bitrix24`, form-encoded:
//!
//! ```text
//! event=ONCRMCONTACTUPDATE&event_handler_id=12&data[FIELDS][ID]=82&ts=1764669600
//!   &auth[domain]=<portal>&auth[member_id]=<member id>&auth[application_token]=<token>
//! ```
//!
//! Bitrix24 signs nothing: the credential is `auth[application_token]`, which must equal the
//! token stored for the portal's `auth[member_id]` (the application token Bitrix24 issued when
//! the handler was bound). The credential travels in the body, so the body's size is checked
//! first and the form is decoded before the token is compared; nothing else of it is read
//! before the token matches.
//!
//! `ONCRMCONTACTADD|UPDATE` name a contact, `ONCRMACTIVITYADD|UPDATE` a task (an activity);
//! other events are verified and acknowledged with no hints. One delivery is
//! `{member_id}:{event}:{data[FIELDS][ID]}:{ts}`: Bitrix24 calls once per change, so the same
//! change delivered twice has the same identity.

use super::{check_secret, check_size, crm_id, delivery_id, is_token, malformed, secret_matches, unix_time};
use super::{Form, Hint, InboundRequest, Repeated, WebhookRefusal, MAX_ID_BYTES};
use backbone_sync::clients::Entity;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `webhooks.bitrix24`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bitrix24Webhook {
    /// The application token of each portal, by its `member_id`.
    pub application_tokens: BTreeMap<String, SecretString>,
}

pub(super) struct Verifier {
    tokens: BTreeMap<String, SecretString>,
}

impl Verifier {
    pub fn new(cfg: &Bitrix24Webhook) -> Result<Self, String> {
        const SETTING: &str = "webhooks.bitrix24.application_tokens";
        if cfg.application_tokens.is_empty() {
            return Err(format!("{SETTING}: no member id configured"));
        }
        for (member, token) in &cfg.application_tokens {
            if !is_token(member, MAX_ID_BYTES) {
                return Err(format!(
                    "{SETTING}: a member id is not 1 to 64 bytes without whitespace"
                ));
            }
            check_secret(SETTING, token)?;
        }
        Ok(Self {
            tokens: cfg.application_tokens.clone(),
        })
    }

    pub fn verify(&self, req: &InboundRequest<'_>) -> Result<Vec<Hint>, WebhookRefusal> {
        check_size(req.body)?;
        let form = Form::parse(req.body);
        // A credential given twice is ambiguous: it cannot verify.
        let credential = |key| form.one(key).map_err(|Repeated| WebhookRefusal::Forbidden);
        let member = credential("auth[member_id]")?;
        let token = credential("auth[application_token]")?;
        let (Some(member), Some(token)) = (member.filter(|s| !s.is_empty()), token.filter(|s| !s.is_empty()))
        else {
            return Err(WebhookRefusal::Unauthenticated);
        };
        match self.tokens.get(member) {
            Some(stored) if secret_matches(token.as_bytes(), stored) => {}
            _ => return Err(WebhookRefusal::Forbidden),
        }
        parse(&form, member)
    }
}

/// Reads a verified form; `member` is a configured member id.
fn parse(form: &Form, member: &str) -> Result<Vec<Hint>, WebhookRefusal> {
    let event = form.required("event")?;
    if !is_token(event, MAX_ID_BYTES) {
        return Err(malformed(
            "event",
            "not an event name (1 to 64 bytes, no whitespace)",
        ));
    }
    // Bitrix24 sends event names in upper case; `event.bind` takes any case.
    let event = event.to_ascii_uppercase();
    let entity = match event.as_str() {
        "ONCRMCONTACTADD" | "ONCRMCONTACTUPDATE" => Entity::Contact,
        "ONCRMACTIVITYADD" | "ONCRMACTIVITYUPDATE" => Entity::Task,
        _ => return Ok(Vec::new()),
    };
    let id = crm_id("data[FIELDS][ID]", form.required("data[FIELDS][ID]")?)?;
    let (ts, at) = unix_time("ts", form.required("ts")?)?;
    Ok(vec![Hint {
        vendor: "bitrix24".to_owned(),
        delivery_id: delivery_id("delivery id", format!("{member}:{event}:{id}:{ts}"))?,
        entity,
        crm_id: id,
        client_id: None,
        event,
        occurred_at: Some(at),
    }])
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_malformed, request};
    use super::*;
    use reqwest::header::HeaderMap;

    const TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    const OTHER_TOKEN: &str = "ffffffffffffffffffffffffffffffff";

    fn verifier() -> Verifier {
        Verifier::new(&Bitrix24Webhook {
            application_tokens: BTreeMap::from([
                ("member-1".to_owned(), SecretString::from(TOKEN)),
                ("member-2".to_owned(), SecretString::from(OTHER_TOKEN)),
            ]),
        })
        .expect("valid")
    }

    fn verify(body: &str) -> Result<Vec<Hint>, WebhookRefusal> {
        let headers = HeaderMap::new();
        verifier().verify(&request("/webhooks/bitrix24", &headers, body.as_bytes()))
    }

    fn delivery(event: &str, auth: &str) -> String {
        format!("event={event}&event_handler_id=12&data[FIELDS][ID]=82&ts=1764669600&auth[domain]=acme.bitrix24.com{auth}")
    }

    fn auth(member: &str, token: &str) -> String {
        format!("&auth[member_id]={member}&auth[application_token]={token}")
    }

    #[test]
    fn a_contact_update_gives_one_hint() {
        let hints = verify(&delivery("ONCRMCONTACTUPDATE", &auth("member-1", TOKEN))).expect("verified");
        assert_eq!(
            hints,
            vec![Hint {
                vendor: "bitrix24".into(),
                delivery_id: "member-1:ONCRMCONTACTUPDATE:82:1764669600".into(),
                entity: Entity::Contact,
                crm_id: "82".into(),
                client_id: None,
                event: "ONCRMCONTACTUPDATE".into(),
                occurred_at: Some(time::macros::datetime!(2025-12-02 10:00:00 UTC)),
            }]
        );
    }

    #[test]
    fn activities_are_tasks_and_percent_encoded_keys_are_read() {
        let body = "event=ONCRMACTIVITYADD&data%5BFIELDS%5D%5BID%5D=9100&ts=1764669600\
                    &auth%5Bmember_id%5D=member-2&auth%5Bapplication_token%5D=ffffffffffffffffffffffffffffffff";
        let hints = verify(body).expect("verified");
        assert_eq!(hints.len(), 1);
        assert_eq!(
            (hints[0].entity, hints[0].crm_id.as_str()),
            (Entity::Task, "9100")
        );
        assert_eq!(hints[0].delivery_id, "member-2:ONCRMACTIVITYADD:9100:1764669600");
        let lower = verify(&delivery("onCrmContactAdd", &auth("member-1", TOKEN))).expect("verified");
        assert_eq!(lower[0].event, "ONCRMCONTACTADD");
    }

    #[test]
    fn events_not_synced_are_acknowledged_with_no_hints() {
        for event in ["ONCRMDEALUPDATE", "ONCRMCONTACTDELETE", "ONCRMTIMELINECOMMENTADD"] {
            assert_eq!(
                verify(&delivery(event, &auth("member-1", TOKEN))),
                Ok(Vec::new()),
                "{event}"
            );
        }
        // Still only once verified.
        assert_eq!(
            verify(&delivery("ONCRMDEALUPDATE", &auth("member-1", OTHER_TOKEN))),
            Err(WebhookRefusal::Forbidden)
        );
    }

    #[test]
    fn a_missing_token_or_member_id_is_unauthenticated() {
        assert_eq!(
            verify(&delivery("ONCRMCONTACTUPDATE", "")),
            Err(WebhookRefusal::Unauthenticated)
        );
        assert_eq!(
            verify(&delivery("ONCRMCONTACTUPDATE", "&auth[member_id]=member-1")),
            Err(WebhookRefusal::Unauthenticated)
        );
        assert_eq!(
            verify(&delivery(
                "ONCRMCONTACTUPDATE",
                &format!("&auth[application_token]={TOKEN}")
            )),
            Err(WebhookRefusal::Unauthenticated)
        );
        assert_eq!(
            verify(&delivery("ONCRMCONTACTUPDATE", &auth("member-1", ""))),
            Err(WebhookRefusal::Unauthenticated)
        );
        assert_eq!(
            verify(&delivery("ONCRMCONTACTUPDATE", &auth("", TOKEN))),
            Err(WebhookRefusal::Unauthenticated)
        );
        // Whatever else the body holds.
        assert_eq!(
            verify("not a form at all \u{1}"),
            Err(WebhookRefusal::Unauthenticated)
        );
    }

    #[test]
    fn a_token_that_is_not_the_members_is_forbidden() {
        for (member, token) in [
            ("member-1", OTHER_TOKEN),
            ("member-1", "a1b2c3d4e5f60718293a4b5c6d7e8f9"),
            ("member-3", TOKEN),
        ] {
            assert_eq!(
                verify(&delivery("ONCRMCONTACTUPDATE", &auth(member, token))),
                Err(WebhookRefusal::Forbidden),
                "{member}"
            );
        }
        let twice = format!(
            "{}&auth[application_token]={OTHER_TOKEN}",
            auth("member-2", OTHER_TOKEN)
        );
        assert_eq!(
            verify(&delivery("ONCRMCONTACTUPDATE", &twice)),
            Err(WebhookRefusal::Forbidden)
        );
    }

    #[test]
    fn a_verified_body_of_another_shape_is_malformed_without_its_values() {
        let a = auth("member-1", TOKEN);
        let secret_value = "VALUE-NOT-TO-ECHO";
        let cases = [
            (format!("data[FIELDS][ID]=82&ts=1764669600{a}"), "event"),
            (
                format!("event={secret_value}+x&data[FIELDS][ID]=82&ts=1{a}"),
                "event",
            ),
            (
                format!("event=ONCRMCONTACTADD&event=ONCRMCONTACTUPDATE&data[FIELDS][ID]=82&ts=1{a}"),
                "event",
            ),
            (
                format!("event=ONCRMCONTACTADD&ts=1764669600{a}"),
                "data[FIELDS][ID]",
            ),
            (
                format!("event=ONCRMCONTACTADD&data[FIELDS][ID]={secret_value}%20x&ts=1{a}"),
                "data[FIELDS][ID]",
            ),
            (
                format!(
                    "event=ONCRMCONTACTADD&data[FIELDS][ID]={}&ts=1{a}",
                    "9".repeat(65)
                ),
                "data[FIELDS][ID]",
            ),
            (format!("event=ONCRMCONTACTADD&data[FIELDS][ID]=82{a}"), "ts"),
            (
                format!("event=ONCRMCONTACTADD&data[FIELDS][ID]=82&ts={secret_value}{a}"),
                "ts",
            ),
        ];
        for (body, part) in cases {
            assert_malformed(verify(&body), part, &[secret_value, TOKEN, "member-1"]);
        }
    }

    #[test]
    fn a_body_over_the_limit_is_refused_before_the_token_is_looked_for() {
        let mut body = delivery("ONCRMCONTACTUPDATE", &auth("member-1", TOKEN));
        body.push_str(&"&x=1".repeat(super::super::MAX_WEBHOOK_BYTES / 4));
        assert_malformed(verify(&body), "body", &[TOKEN]);
    }

    #[test]
    fn the_configuration_needs_members_and_long_tokens() {
        let cfg = |member: &str, token: &str| Bitrix24Webhook {
            application_tokens: BTreeMap::from([(member.to_owned(), SecretString::from(token))]),
        };
        assert!(Verifier::new(&Bitrix24Webhook {
            application_tokens: BTreeMap::new()
        })
        .is_err());
        assert!(Verifier::new(&cfg("member 1", TOKEN)).is_err());
        let e = Verifier::new(&cfg("member-1", "tiny-token"))
            .err()
            .expect("refused");
        assert!(!e.contains("tiny-token") && !e.contains("member-1"), "{e}");
        assert!(Verifier::new(&cfg("member-1", TOKEN)).is_ok());
    }
}
