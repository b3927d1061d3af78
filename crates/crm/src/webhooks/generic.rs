//! The generic CRM's webhook: `POST /webhooks/generic`, JSON, signed with the webhook secret by
//! the `X-Signature` v2 scheme ([`crate::signing`]): method, target, `X-Timestamp`, `X-Nonce`
//! and body. Accepted only with a matching signature, a timestamp within
//! [`signing::MAX_SKEW_SECS`] and a nonce not seen before.
//!
//! ```json
//! {"deliveryId":"<uuid>","event":"contact.updated","entity":"contact","id":"<crm id>",
//!  "externalId":"<our id or null>","occurredAt":"RFC 3339"}
//! ```

use super::nonces::{Admission, NonceCache};
use super::{check_secret, check_size, client_id, crm_id, delivery_id, is_token, malformed, rfc3339};
use super::{Hint, InboundRequest, WebhookRefusal, MAX_ID_BYTES};
use crate::signing::{self, SignedParts};
use backbone_sync::clients::Entity;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Mutex;

/// How many nonces are remembered at most: more accepted deliveries than this within the
/// ten-minute window (±[`signing::MAX_SKEW_SECS`]) are refused until older ones expire.
pub const NONCE_CAPACITY: usize = 100_000;

/// `webhooks.generic`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericWebhook {
    /// The webhook secret the generic CRM signs with (not its API token).
    pub secret: SecretString,
}

pub(super) struct Verifier {
    secret: SecretString,
    nonces: Mutex<NonceCache>,
}

impl Verifier {
    pub fn new(cfg: &GenericWebhook) -> Result<Self, String> {
        Self::with_capacity(cfg, NONCE_CAPACITY)
    }

    fn with_capacity(cfg: &GenericWebhook, capacity: usize) -> Result<Self, String> {
        check_secret("webhooks.generic.secret", &cfg.secret)?;
        Ok(Self {
            secret: cfg.secret.clone(),
            nonces: Mutex::new(NonceCache::new(capacity)),
        })
    }

    pub fn verify(&self, req: &InboundRequest<'_>) -> Result<Vec<Hint>, WebhookRefusal> {
        let mut signatures = req.headers.get_all(signing::SIGNATURE_HEADER).iter();
        let Some(signature) = signatures.next().filter(|s| !s.is_empty()) else {
            return Err(WebhookRefusal::Unauthenticated);
        };
        if signatures.next().is_some() {
            return Err(WebhookRefusal::Forbidden);
        }
        check_size(req.body)?;
        let header = |name| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(WebhookRefusal::Forbidden)
        };
        let signature = signature.to_str().map_err(|_| WebhookRefusal::Forbidden)?;
        let parts = SignedParts {
            method: req.method,
            target: req.target,
            timestamp: header(signing::TIMESTAMP_HEADER)?,
            nonce: header(signing::NONCE_HEADER)?,
            body: req.body,
        };
        let now = req.now.unix_timestamp();
        signing::verify(self.secret.expose_secret().as_bytes(), &parts, signature, now)
            .map_err(|_| WebhookRefusal::Forbidden)?;
        // `verify` parsed it already.
        let ts: i64 = parts.timestamp.parse().map_err(|_| WebhookRefusal::Forbidden)?;
        let expires_at = ts.saturating_add(signing::MAX_SKEW_SECS);
        let admission = self
            .nonces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(parts.nonce, expires_at, now);
        if admission != Admission::Fresh {
            return Err(WebhookRefusal::Forbidden);
        }
        parse(req.body).map(|hint| vec![hint])
    }
}

/// Reads a verified body. serde's own messages quote values, so the fields are read by hand.
fn parse(body: &[u8]) -> Result<Hint, WebhookRefusal> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| malformed("body", "not JSON"))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| malformed("body", "not a JSON object"))?;
    let entity = match required(obj, "entity")? {
        "contact" => Entity::Contact,
        "task" => Entity::Task,
        _ => return Err(malformed("entity", "not contact or task")),
    };
    let event = required(obj, "event")?;
    if !is_token(event, MAX_ID_BYTES) {
        return Err(malformed(
            "event",
            "not an event name (1 to 64 bytes, no whitespace)",
        ));
    }
    if event
        .strip_prefix(entity.as_str())
        .and_then(|rest| rest.strip_prefix('.'))
        .is_none()
    {
        return Err(malformed("event", "does not name the entity"));
    }
    let external = match obj.get("externalId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(malformed("externalId", "not a string or null")),
    };
    Ok(Hint {
        vendor: "generic".to_owned(),
        delivery_id: delivery_id("deliveryId", required(obj, "deliveryId")?.to_owned())?,
        entity,
        crm_id: crm_id("id", required(obj, "id")?)?,
        // A task's externalId is our task id, not a client id.
        client_id: if entity == Entity::Contact {
            client_id(external)
        } else {
            None
        },
        event: event.to_owned(),
        occurred_at: Some(rfc3339("occurredAt", required(obj, "occurredAt")?)?),
    })
}

fn required<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, WebhookRefusal> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(malformed(key, "missing")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(malformed(key, "not a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_malformed, now, request};
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    const SECRET: &str = "generic-webhook-secret-0123";
    const TARGET: &str = "/webhooks/generic";

    fn verifier() -> Verifier {
        Verifier::new(&GenericWebhook {
            secret: SecretString::from(SECRET),
        })
        .expect("valid")
    }

    fn signed(secret: &str, target: &str, ts: i64, nonce: &str, body: &[u8]) -> HeaderMap {
        let ts = ts.to_string();
        let sig = signing::sign(
            secret.as_bytes(),
            &SignedParts {
                method: "POST",
                target,
                timestamp: &ts,
                nonce,
                body,
            },
        );
        let mut h = HeaderMap::new();
        h.insert(
            signing::TIMESTAMP_HEADER,
            HeaderValue::from_str(&ts).expect("ascii"),
        );
        h.insert(
            signing::NONCE_HEADER,
            HeaderValue::from_str(nonce).expect("ascii"),
        );
        h.insert(
            signing::SIGNATURE_HEADER,
            HeaderValue::from_str(&sig).expect("ascii"),
        );
        h
    }

    fn body(entity: &str, event: &str, external: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "deliveryId": "5f0c6e1d-9a7b-4c2e-8f3a-1b0c9d8e7f6a",
            "event": event,
            "entity": entity,
            "id": "crm-82",
            "externalId": external,
            "occurredAt": "2026-12-02T09:59:30Z",
        }))
        .expect("json")
    }

    fn deliver(v: &Verifier, nonce: &str, body: &[u8]) -> Result<Vec<Hint>, WebhookRefusal> {
        let headers = signed(SECRET, TARGET, now().unix_timestamp(), nonce, body);
        v.verify(&request(TARGET, &headers, body))
    }

    #[test]
    fn a_signed_contact_update_gives_one_hint() {
        let body = body("contact", "contact.updated", "c-1".into());
        let hints = deliver(&verifier(), "nonce-1", &body).expect("verified");
        assert_eq!(
            hints,
            vec![Hint {
                vendor: "generic".into(),
                delivery_id: "5f0c6e1d-9a7b-4c2e-8f3a-1b0c9d8e7f6a".into(),
                entity: Entity::Contact,
                crm_id: "crm-82".into(),
                client_id: Some(backbone_sync::clients::ClientId::parse("c-1").expect("valid")),
                event: "contact.updated".into(),
                occurred_at: Some(time::macros::datetime!(2026-12-02 09:59:30 UTC)),
            }]
        );
    }

    #[test]
    fn external_ids_give_a_client_id_only_for_a_valid_contact_one() {
        let v = verifier();
        let task = deliver(&v, "n-task", &body("task", "task.updated", "t-1".into())).expect("task");
        assert_eq!((task[0].entity, &task[0].client_id), (Entity::Task, &None));
        let null = deliver(&v, "n-null", &body("contact", "contact.created", Value::Null)).expect("null");
        assert_eq!(null[0].client_id, None);
        let bad = deliver(
            &v,
            "n-bad",
            &body("contact", "contact.created", "has space".into()),
        )
        .expect("bad");
        assert_eq!(bad[0].client_id, None);
    }

    #[test]
    fn no_signature_is_unauthenticated_whatever_the_body() {
        let v = verifier();
        let mut headers = signed(SECRET, TARGET, now().unix_timestamp(), "n1", b"{}");
        headers.remove(signing::SIGNATURE_HEADER);
        assert_eq!(
            v.verify(&request(TARGET, &headers, b"not json")),
            Err(WebhookRefusal::Unauthenticated)
        );
        headers.insert(signing::SIGNATURE_HEADER, HeaderValue::from_static(""));
        assert_eq!(
            v.verify(&request(TARGET, &headers, b"{}")),
            Err(WebhookRefusal::Unauthenticated)
        );
        headers.remove(signing::SIGNATURE_HEADER);
        let huge = vec![b'x'; super::super::MAX_WEBHOOK_BYTES + 1];
        assert_eq!(
            v.verify(&request(TARGET, &headers, &huge)),
            Err(WebhookRefusal::Unauthenticated)
        );
    }

    #[test]
    fn a_signature_that_does_not_verify_is_forbidden() {
        let v = verifier();
        let body = body("contact", "contact.updated", "c-1".into());
        let ts = now().unix_timestamp();
        let wrong_secret = signed("another-secret-0123456789", TARGET, ts, "n1", &body);
        assert_eq!(
            v.verify(&request(TARGET, &wrong_secret, &body)),
            Err(WebhookRefusal::Forbidden)
        );
        let other_target = signed(SECRET, "/webhooks/kommo", ts, "n2", &body);
        assert_eq!(
            v.verify(&request(TARGET, &other_target, &body)),
            Err(WebhookRefusal::Forbidden)
        );
        let mut no_nonce = signed(SECRET, TARGET, ts, "n3", &body);
        no_nonce.remove(signing::NONCE_HEADER);
        assert_eq!(
            v.verify(&request(TARGET, &no_nonce, &body)),
            Err(WebhookRefusal::Forbidden)
        );
        let mut twice = signed(SECRET, TARGET, ts, "n4", &body);
        let sig = twice.get(signing::SIGNATURE_HEADER).cloned().expect("signed");
        twice.append(signing::SIGNATURE_HEADER, sig);
        assert_eq!(
            v.verify(&request(TARGET, &twice, &body)),
            Err(WebhookRefusal::Forbidden)
        );
        let mut tampered = body.clone();
        tampered[2] ^= 1;
        let headers = signed(SECRET, TARGET, ts, "n5", &body);
        assert_eq!(
            v.verify(&request(TARGET, &headers, &tampered)),
            Err(WebhookRefusal::Forbidden)
        );
    }

    #[test]
    fn a_replayed_nonce_is_forbidden() {
        let v = verifier();
        let body = body("contact", "contact.updated", "c-1".into());
        let headers = signed(SECRET, TARGET, now().unix_timestamp(), "n-replay", &body);
        assert!(v.verify(&request(TARGET, &headers, &body)).is_ok());
        assert_eq!(
            v.verify(&request(TARGET, &headers, &body)),
            Err(WebhookRefusal::Forbidden)
        );
        // The same nonce with another, correctly signed body is a replay too.
        let other = self::body("task", "task.updated", Value::Null);
        let headers = signed(SECRET, TARGET, now().unix_timestamp(), "n-replay", &other);
        assert_eq!(
            v.verify(&request(TARGET, &headers, &other)),
            Err(WebhookRefusal::Forbidden)
        );
    }

    #[test]
    fn a_skewed_timestamp_is_forbidden() {
        let v = verifier();
        let body = body("contact", "contact.updated", "c-1".into());
        let now = now().unix_timestamp();
        for ts in [now - signing::MAX_SKEW_SECS - 1, now + signing::MAX_SKEW_SECS + 1] {
            let headers = signed(SECRET, TARGET, ts, &format!("n{ts}"), &body);
            assert_eq!(
                v.verify(&request(TARGET, &headers, &body)),
                Err(WebhookRefusal::Forbidden)
            );
        }
        let headers = signed(SECRET, TARGET, now - signing::MAX_SKEW_SECS, "n-edge", &body);
        assert!(v.verify(&request(TARGET, &headers, &body)).is_ok());
    }

    #[test]
    fn a_full_nonce_cache_refuses_new_deliveries() {
        let v = Verifier::with_capacity(
            &GenericWebhook {
                secret: SecretString::from(SECRET),
            },
            1,
        )
        .expect("valid");
        let body = body("contact", "contact.updated", "c-1".into());
        assert!(deliver(&v, "first", &body).is_ok());
        assert_eq!(deliver(&v, "second", &body), Err(WebhookRefusal::Forbidden));
    }

    #[test]
    fn a_verified_body_of_another_shape_is_malformed_without_its_values() {
        let v = verifier();
        let secret_value = "VALUE-NOT-TO-ECHO";
        let mut n = 0;
        let mut check = |doc: Value, part: &str| {
            n += 1;
            let raw = serde_json::to_vec(&doc).expect("json");
            assert_malformed(deliver(&v, &format!("m{n}"), &raw), part, &[secret_value]);
        };
        let good = serde_json::json!({
            "deliveryId": "d-1", "event": "contact.updated", "entity": "contact", "id": "82",
            "externalId": "c-1", "occurredAt": "2026-12-02T09:59:30Z",
        });
        let with = |key: &str, value: Value| {
            let mut doc = good.clone();
            doc[key] = value;
            doc
        };
        check(with("entity", secret_value.into()), "entity");
        check(with("entity", "note".into()), "entity");
        check(with("event", "task.updated".into()), "event");
        check(with("event", format!("contact.{secret_value} x").into()), "event");
        check(with("id", format!("{secret_value} x").into()), "id");
        check(with("id", 82.into()), "id");
        check(with("deliveryId", "x".repeat(201).into()), "deliveryId");
        check(with("deliveryId", Value::Null), "deliveryId");
        check(with("occurredAt", secret_value.into()), "occurredAt");
        check(with("externalId", 5.into()), "externalId");
        check(serde_json::json!([secret_value]), "body");
        let raw = format!("{{\"entity\": \"{secret_value}");
        assert_malformed(deliver(&v, "m-raw", raw.as_bytes()), "body", &[secret_value]);
    }
}
