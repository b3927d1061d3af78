//! Inbound CRM webhooks: verify a delivery's credential, then read it into [`Hint`]s
//! (`docs/two-way-sync.md`, "In: webhooks"; `docs/crm-vendors.md`, "Inbound webhooks").
//!
//! Pure code: the HTTP layer hands over the request ([`InboundRequest`]) and answers with the
//! refusal's status or with [`Webhooks::ack`]. The steps, per vendor, in this order:
//!
//! 1. the credential that is not in the body (the `X-Signature` header, the path secret): absent
//!    or empty is [`WebhookRefusal::Unauthenticated`], wrong is [`WebhookRefusal::Forbidden`];
//! 2. the body's size ([`MAX_WEBHOOK_BYTES`]), before any work in proportion to it;
//! 3. the credential over or in the body (the signature and a fresh nonce, Bitrix24's
//!    application token, Kommo's account id, Salesforce's organization id): wrong or
//!    ambiguous (given twice) is `Forbidden`; Bitrix24's token and member id, its only
//!    credential, absent or empty is `Unauthenticated`;
//! 4. only then the body's shape: anything else is [`WebhookRefusal::Malformed`], with a reason
//!    that names the part and never repeats a value.
//!
//! Secrets are compared in constant time and never appear in an error or in `Debug` output.

mod bitrix24;
mod generic;
mod kommo;
mod nonces;
mod salesforce;

pub use bitrix24::Bitrix24Webhook;
pub use generic::GenericWebhook;
pub use kommo::KommoWebhook;
pub use salesforce::SalesforceWebhook;

pub use backbone_sync::clients::{Hint, WebhookRefusal};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The largest body read; a larger one is refused before it is looked at.
pub const MAX_WEBHOOK_BYTES: usize = 256 * 1024;
/// The most records one delivery may name (Salesforce's own limit for Outbound Messages).
pub const MAX_ENTRIES: usize = 100;
/// The longest delivery id, in bytes.
pub const MAX_DELIVERY_ID_BYTES: usize = 200;
/// The longest CRM id, member id or account id, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// The shortest secret accepted in the configuration.
pub const MIN_SECRET_BYTES: usize = 16;
/// The longest path secret (it is one URL path segment).
pub const MAX_PATH_SECRET_BYTES: usize = 256;

/// The vendors with an endpoint, as they appear in the path (`/webhooks/{vendor}`).
pub const VENDORS: [&str; 4] = ["generic", "bitrix24", "kommo", "salesforce"];

/// An inbound request as the HTTP layer received it.
pub struct InboundRequest<'a> {
    pub method: &'a str,
    /// Path and query as on the request line (for the generic signature).
    pub target: &'a str,
    pub headers: &'a reqwest::header::HeaderMap,
    pub body: &'a [u8],
    pub now: time::OffsetDateTime,
}

/// What to answer a verified delivery with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// `webhooks.*`: one table per vendor whose endpoint is served; a vendor left out is not served.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    pub generic: Option<GenericWebhook>,
    pub bitrix24: Option<Bitrix24Webhook>,
    pub kommo: Option<KommoWebhook>,
    pub salesforce: Option<SalesforceWebhook>,
}

/// The verifiers of the configured endpoints. Shared by every request (`Send + Sync`): the
/// generic endpoint's nonce cache is behind a lock.
pub struct Webhooks {
    generic: Option<generic::Verifier>,
    bitrix24: Option<bitrix24::Verifier>,
    kommo: Option<kommo::Verifier>,
    salesforce: Option<salesforce::Verifier>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let served: Vec<&str> = VENDORS.into_iter().filter(|v| self.serves(v)).collect();
        f.debug_struct("Webhooks").field("served", &served).finish()
    }
}

impl Webhooks {
    /// Checks the configuration (secrets of at least [`MIN_SECRET_BYTES`], well-formed ids); the
    /// error names the setting, never its value.
    pub fn new(cfg: &WebhookConfig) -> Result<Self, String> {
        Ok(Self {
            generic: cfg.generic.as_ref().map(generic::Verifier::new).transpose()?,
            bitrix24: cfg.bitrix24.as_ref().map(bitrix24::Verifier::new).transpose()?,
            kommo: cfg.kommo.as_ref().map(kommo::Verifier::new).transpose()?,
            salesforce: cfg
                .salesforce
                .as_ref()
                .map(salesforce::Verifier::new)
                .transpose()?,
        })
    }

    /// Whether this vendor's endpoint is configured (otherwise the HTTP layer answers 404).
    pub fn serves(&self, vendor: &str) -> bool {
        match vendor {
            "generic" => self.generic.is_some(),
            "bitrix24" => self.bitrix24.is_some(),
            "kommo" => self.kommo.is_some(),
            "salesforce" => self.salesforce.is_some(),
            _ => false,
        }
    }

    /// Verifies one delivery and reads the records it names. `vendor` is from the path
    /// (`generic`, `bitrix24`, `kommo`, `salesforce`); `path_secret` the path segment after it
    /// (Kommo, Salesforce), `None` when absent. A vendor that is not served refuses everything
    /// with `Forbidden` (the HTTP layer answers 404 before asking, see [`Webhooks::serves`]).
    ///
    /// `Ok` with no hints: a verified delivery of events that are not synced (Bitrix24
    /// `ONCRMDEALUPDATE`, Kommo `leads[...]`, a Salesforce object other than Contact and Task).
    /// It is acknowledged and nothing is stored.
    pub fn verify(
        &self,
        vendor: &str,
        path_secret: Option<&str>,
        req: &InboundRequest<'_>,
    ) -> Result<Vec<Hint>, WebhookRefusal> {
        let hints = match vendor {
            "generic" => self.generic.as_ref().map(|v| v.verify(req)),
            "bitrix24" => self.bitrix24.as_ref().map(|v| v.verify(req)),
            "kommo" => self.kommo.as_ref().map(|v| v.verify(path_secret, req)),
            "salesforce" => self.salesforce.as_ref().map(|v| v.verify(path_secret, req)),
            _ => None,
        }
        .unwrap_or(Err(WebhookRefusal::Forbidden))?;
        Ok(distinct(hints))
    }

    /// The answer for a verified delivery: generic `202` `{}`, Bitrix24 and Kommo `200` `{}`,
    /// Salesforce `200` `text/xml` with the SOAP `<Ack>true</Ack>`; `404` for another vendor.
    pub fn ack(&self, vendor: &str) -> Ack {
        let json = |status| Ack {
            status,
            content_type: "application/json",
            body: "{}".to_owned(),
        };
        match vendor {
            "generic" => json(202),
            "bitrix24" | "kommo" => json(200),
            "salesforce" => Ack {
                status: 200,
                content_type: "text/xml",
                body: salesforce::ACK.to_owned(),
            },
            _ => json(404),
        }
    }
}

/// The hints without repeats of one delivery id (a body naming the same change twice), first
/// one kept: intake stores each delivery once anyway, this keeps one transaction from holding
/// the same key twice.
fn distinct(hints: Vec<Hint>) -> Vec<Hint> {
    let mut seen = std::collections::HashSet::new();
    hints
        .into_iter()
        .filter(|h| seen.insert(h.delivery_id.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Shared by the vendors

fn malformed(part: &str, reason: &str) -> WebhookRefusal {
    WebhookRefusal::Malformed(format!("{part}: {reason}"))
}

/// Refuses a body over [`MAX_WEBHOOK_BYTES`].
fn check_size(body: &[u8]) -> Result<(), WebhookRefusal> {
    if body.len() > MAX_WEBHOOK_BYTES {
        return Err(malformed(
            "body",
            &format!("larger than {MAX_WEBHOOK_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Whether `raw` is 1..=`max` bytes without whitespace or control characters.
fn is_token(raw: &str, max: usize) -> bool {
    !raw.is_empty() && raw.len() <= max && !raw.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// A CRM id (or another short id) from the body: 1..=64 bytes, printable, no whitespace.
fn crm_id(part: &str, raw: &str) -> Result<String, WebhookRefusal> {
    if is_token(raw, MAX_ID_BYTES) {
        Ok(raw.to_owned())
    } else {
        Err(malformed(
            part,
            "not an id (1 to 64 bytes, printable, no whitespace)",
        ))
    }
}

/// A delivery id: 1..=[`MAX_DELIVERY_ID_BYTES`] bytes, printable, no whitespace.
fn delivery_id(part: &str, raw: String) -> Result<String, WebhookRefusal> {
    if is_token(&raw, MAX_DELIVERY_ID_BYTES) {
        Ok(raw)
    } else {
        Err(malformed(
            part,
            "not a delivery id (1 to 200 bytes, printable, no whitespace)",
        ))
    }
}

/// A Unix time in whole seconds, as Bitrix24 `ts` and Kommo `last_modified` carry it.
fn unix_time(part: &str, raw: &str) -> Result<(i64, time::OffsetDateTime), WebhookRefusal> {
    let secs = (raw.len() <= 20 && raw.bytes().all(|b| b.is_ascii_digit()))
        .then(|| raw.parse::<i64>().ok())
        .flatten();
    secs.and_then(|s| Some((s, time::OffsetDateTime::from_unix_timestamp(s).ok()?)))
        .ok_or_else(|| malformed(part, "not a Unix time in seconds"))
}

fn rfc3339(part: &str, raw: &str) -> Result<time::OffsetDateTime, WebhookRefusal> {
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|_| malformed(part, "not an RFC 3339 time"))
}

/// Our client id, when `raw` is a valid one: the hint is only a hint, so an id that does not
/// fit is left out rather than refusing the delivery (the processor re-reads the record).
fn client_id(raw: Option<&str>) -> Option<backbone_sync::clients::ClientId> {
    raw.and_then(|s| backbone_sync::clients::ClientId::parse(s).ok())
}

/// A form-encoded body (`application/x-www-form-urlencoded`), decoded once. Bracketed keys
/// (`data[FIELDS][ID]`) are kept whole; invalid UTF-8 is replaced, never refused here.
struct Form {
    pairs: Vec<(String, String)>,
}

/// A key that should appear once appeared more often.
struct Repeated;

impl Form {
    fn parse(body: &[u8]) -> Self {
        Self {
            pairs: form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        }
    }

    /// The value of a key that may appear at most once.
    fn one(&self, key: &str) -> Result<Option<&str>, Repeated> {
        let mut values = self
            .pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str());
        let first = values.next();
        match values.next() {
            Some(_) => Err(Repeated),
            None => Ok(first),
        }
    }

    /// A part of the vendor's shape that must appear exactly once.
    fn required(&self, key: &str) -> Result<&str, WebhookRefusal> {
        self.one(key)
            .map_err(|Repeated| malformed(key, "given more than once"))?
            .ok_or_else(|| malformed(key, "missing"))
    }
}

/// Equality of a presented secret with the configured one in constant time (both hashed first,
/// so not even the length is told apart by timing).
fn secret_matches(presented: &[u8], configured: &SecretString) -> bool {
    let a = Sha256::digest(presented);
    let b = Sha256::digest(configured.expose_secret().as_bytes());
    a.ct_eq(&b).into()
}

/// A configured secret: at least [`MIN_SECRET_BYTES`].
fn check_secret(setting: &str, secret: &SecretString) -> Result<(), String> {
    if secret.expose_secret().len() < MIN_SECRET_BYTES {
        return Err(format!("{setting}: shorter than {MIN_SECRET_BYTES} bytes"));
    }
    Ok(())
}

/// A configured path secret: a secret that is also one URL path segment as sent, i.e. of
/// unreserved characters only (`A-Z a-z 0-9 - . _ ~`), so that no percent-decoding can make two
/// spellings of it.
fn check_path_secret(setting: &str, secret: &SecretString) -> Result<(), String> {
    check_secret(setting, secret)?;
    let s = secret.expose_secret();
    if s.len() > MAX_PATH_SECRET_BYTES {
        return Err(format!("{setting}: longer than {MAX_PATH_SECRET_BYTES} bytes"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    {
        return Err(format!(
            "{setting}: only A-Z, a-z, 0-9, '-', '.', '_' and '~' are allowed"
        ));
    }
    Ok(())
}

/// Checks the path secret of a Kommo or Salesforce delivery.
fn check_path(presented: Option<&str>, configured: &SecretString) -> Result<(), WebhookRefusal> {
    match presented {
        None | Some("") => Err(WebhookRefusal::Unauthenticated),
        Some(p) if secret_matches(p.as_bytes(), configured) => Ok(()),
        Some(_) => Err(WebhookRefusal::Forbidden),
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use reqwest::header::HeaderMap;

    pub fn now() -> time::OffsetDateTime {
        time::macros::datetime!(2026-12-02 10:00:00 UTC)
    }

    pub fn request<'a>(target: &'a str, headers: &'a HeaderMap, body: &'a [u8]) -> InboundRequest<'a> {
        InboundRequest {
            method: "POST",
            target,
            headers,
            body,
            now: now(),
        }
    }

    /// Asserts a refusal is `Malformed`, naming `part` and none of `values`.
    pub fn assert_malformed(r: Result<Vec<Hint>, WebhookRefusal>, part: &str, values: &[&str]) {
        match r {
            Err(WebhookRefusal::Malformed(reason)) => {
                assert!(reason.contains(part), "{reason:?} does not name {part}");
                for v in values {
                    assert!(!reason.contains(v), "{reason:?} repeats a value");
                }
            }
            other => panic!("expected Malformed naming {part}, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use reqwest::header::HeaderMap;
    use std::collections::BTreeMap;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn all() -> WebhookConfig {
        WebhookConfig {
            generic: Some(GenericWebhook {
                secret: secret("generic-secret-0123456789"),
            }),
            bitrix24: Some(Bitrix24Webhook {
                application_tokens: BTreeMap::from([(
                    "member-1".to_owned(),
                    secret("application-token-0123456789"),
                )]),
            }),
            kommo: Some(KommoWebhook {
                path_secret: secret("kommo-path-secret-0123456789"),
                account_id: "7039099".to_owned(),
            }),
            salesforce: Some(SalesforceWebhook {
                path_secret: secret("sf-path-secret-0123456789"),
                organization_id: "00D000000000001AAA".to_owned(),
            }),
        }
    }

    #[test]
    fn only_configured_vendors_are_served() {
        let hooks = Webhooks::new(&WebhookConfig::default()).expect("empty config");
        assert!(VENDORS.iter().all(|v| !hooks.serves(v)));
        let hooks = Webhooks::new(&all()).expect("valid config");
        assert!(VENDORS.iter().all(|v| hooks.serves(v)));
        assert!(!hooks.serves("hubspot"));
        let only_kommo = WebhookConfig {
            kommo: all().kommo,
            ..WebhookConfig::default()
        };
        let hooks = Webhooks::new(&only_kommo).expect("valid config");
        assert!(hooks.serves("kommo") && !hooks.serves("generic") && !hooks.serves("salesforce"));
        assert_eq!(format!("{hooks:?}"), r#"Webhooks { served: ["kommo"] }"#);
    }

    #[test]
    fn a_vendor_not_served_refuses_everything() {
        let hooks = Webhooks::new(&WebhookConfig::default()).expect("empty config");
        let headers = HeaderMap::new();
        let req = request("/webhooks/generic", &headers, b"{}");
        for v in VENDORS.iter().chain(&["other"]) {
            assert_eq!(hooks.verify(v, Some("x"), &req), Err(WebhookRefusal::Forbidden));
        }
    }

    #[test]
    fn short_or_ill_formed_secrets_are_refused_without_showing_them() {
        let mut cfg = all();
        cfg.generic = Some(GenericWebhook {
            secret: secret("short-secret"),
        });
        let e = Webhooks::new(&cfg).expect_err("short secret");
        assert!(
            e.contains("webhooks.generic.secret") && !e.contains("short-secret"),
            "{e}"
        );

        let mut cfg = all();
        cfg.kommo = Some(KommoWebhook {
            path_secret: secret("with/a/slash-0123456789"),
            account_id: "7039099".to_owned(),
        });
        let e = Webhooks::new(&cfg).expect_err("path secret with a slash");
        assert!(
            e.contains("webhooks.kommo.path_secret") && !e.contains("slash"),
            "{e}"
        );

        let mut cfg = all();
        cfg.bitrix24 = Some(Bitrix24Webhook {
            application_tokens: BTreeMap::from([("member-1".to_owned(), secret("tok"))]),
        });
        let e = Webhooks::new(&cfg).expect_err("short token");
        assert!(
            e.contains("webhooks.bitrix24.application_tokens") && !e.contains("member-1"),
            "{e}"
        );
    }

    #[test]
    fn the_config_reads_from_toml_shaped_data_and_refuses_unknown_keys() {
        let cfg: WebhookConfig = serde_json::from_value(serde_json::json!({
            "kommo": {"path_secret": "kommo-path-secret-0123456789", "account_id": "7039099"}
        }))
        .expect("valid");
        assert!(cfg.kommo.is_some() && cfg.generic.is_none());
        assert!(!format!("{cfg:?}").contains("kommo-path-secret"));
        let unknown = serde_json::from_value::<WebhookConfig>(serde_json::json!({"hubspot": {}}));
        assert!(unknown.is_err());
        let unknown = serde_json::from_value::<WebhookConfig>(serde_json::json!({
            "generic": {"secret": "generic-secret-0123456789", "extra": 1}
        }));
        assert!(unknown.is_err());
    }

    #[test]
    fn acks_follow_each_vendor() {
        let hooks = Webhooks::new(&all()).expect("valid config");
        assert_eq!(
            hooks.ack("generic"),
            Ack {
                status: 202,
                content_type: "application/json",
                body: "{}".into()
            }
        );
        assert_eq!(hooks.ack("bitrix24").status, 200);
        assert_eq!(hooks.ack("kommo").status, 200);
        let sf = hooks.ack("salesforce");
        assert_eq!((sf.status, sf.content_type), (200, "text/xml"));
        assert_eq!(
            sf.body,
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#
        );
        assert_eq!(hooks.ack("other").status, 404);
    }

    #[test]
    fn secrets_match_only_exactly() {
        let s = secret("generic-secret-0123456789");
        assert!(secret_matches(b"generic-secret-0123456789", &s));
        for other in [
            "",
            "generic-secret-012345678",
            "generic-secret-01234567890",
            "Generic-secret-0123456789",
        ] {
            assert!(!secret_matches(other.as_bytes(), &s), "{other}");
        }
    }

    #[test]
    fn a_body_over_the_limit_is_refused_before_it_is_read() {
        assert_eq!(check_size(&vec![b'a'; MAX_WEBHOOK_BYTES]), Ok(()));
        assert!(matches!(
            check_size(&vec![b'a'; MAX_WEBHOOK_BYTES + 1]),
            Err(WebhookRefusal::Malformed(r)) if r.starts_with("body:")
        ));
    }

    #[test]
    fn unix_times_and_ids_are_bounded() {
        assert_eq!(unix_time("ts", "1764669600").map(|t| t.0), Ok(1_764_669_600));
        for bad in ["", "-1", "+5", "1.5", "99999999999999999999", "12a"] {
            assert!(unix_time("ts", bad).is_err(), "{bad}");
        }
        assert!(crm_id("id", &"1".repeat(64)).is_ok());
        for bad in ["", "a b", "a\u{7f}", &"1".repeat(65)] {
            assert!(crm_id("id", bad).is_err(), "{bad:?}");
        }
        assert!(delivery_id("d", "x".repeat(200)).is_ok());
        assert!(delivery_id("d", "x".repeat(201)).is_err());
    }

    #[test]
    fn the_same_delivery_twice_in_a_body_gives_one_hint() {
        let hint = |d: &str, id: &str| Hint {
            vendor: "kommo".into(),
            delivery_id: d.into(),
            entity: backbone_sync::clients::Entity::Contact,
            crm_id: id.into(),
            client_id: None,
            event: "contacts.update".into(),
            occurred_at: None,
        };
        let out = distinct(vec![hint("a", "1"), hint("b", "2"), hint("a", "3")]);
        assert_eq!(out, vec![hint("a", "1"), hint("b", "2")]);
    }
}
