//! Salesforce Outbound Messages: `POST /webhooks/salesforce/{path secret}`, a SOAP
//! `notifications` call of up to 100 `Notification`s, each with one `sObject` (Contact or Task)
//! of the enterprise namespace.
//!
//! Outbound Messages carry no signature the receiver can check without a client certificate
//! setup, so the credential is the secret path segment of the endpoint URL configured in the
//! message, and the message's `OrganizationId` must be the configured org. A 15-character
//! organization id in the configuration (as Setup shows it) matches the 18-character form
//! Salesforce sends.
//!
//! The body is parsed with `roxmltree`: no DTD (any `<!DOCTYPE` is refused, so no entity can be
//! declared or expanded), a bounded number of nodes. Each `Notification` is one delivery, its
//! `Id` the delivery id (Salesforce retries with the same one); an `sObject` of another type
//! than Contact or Task is acknowledged and skipped.

use super::{check_path, check_path_secret, check_size, client_id, crm_id, delivery_id, malformed, rfc3339};
use super::{Hint, InboundRequest, WebhookRefusal, MAX_ENTRIES};
use backbone_sync::clients::Entity;
use roxmltree::{Document, Node, ParsingOptions};
use secrecy::SecretString;
use serde::Deserialize;

const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const OUTBOUND_NS: &str = "http://soap.sforce.com/2005/09/outbound";
const SOBJECT_NS: &str = "urn:sobject.enterprise.soap.sforce.com";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// More than a message of 100 notifications with many fields each needs.
const MAX_XML_NODES: u32 = 100_000;

/// The answer Salesforce expects, or it delivers the message again.
pub(super) const ACK: &str = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#;

/// `webhooks.salesforce`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceWebhook {
    /// The last path segment of the Outbound Message's endpoint URL
    /// (`/webhooks/salesforce/{path_secret}`).
    pub path_secret: SecretString,
    /// The org's id (`00D…`, 15 or 18 characters).
    pub organization_id: String,
}

pub(super) struct Verifier {
    path_secret: SecretString,
    organization_id: String,
}

impl Verifier {
    pub fn new(cfg: &SalesforceWebhook) -> Result<Self, String> {
        check_path_secret("webhooks.salesforce.path_secret", &cfg.path_secret)?;
        let id = &cfg.organization_id;
        if !matches!(id.len(), 15 | 18) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(
                "webhooks.salesforce.organization_id: not a Salesforce id (15 or 18 letters and digits)"
                    .to_owned(),
            );
        }
        Ok(Self {
            path_secret: cfg.path_secret.clone(),
            organization_id: cfg.organization_id.clone(),
        })
    }

    pub fn verify(
        &self,
        path_secret: Option<&str>,
        req: &InboundRequest<'_>,
    ) -> Result<Vec<Hint>, WebhookRefusal> {
        check_path(path_secret, &self.path_secret)?;
        check_size(req.body)?;
        let doc = parse_xml(req.body)?;
        let notifications = notifications(&doc)?;
        match single(notifications, OUTBOUND_NS, "OrganizationId") {
            Ok(Some(org)) if self.is_our_org(text(org)) => {}
            _ => return Err(WebhookRefusal::Forbidden),
        }
        read(notifications)
    }

    fn is_our_org(&self, presented: &str) -> bool {
        let ours = self.organization_id.as_str();
        presented == ours || (ours.len() == 15 && presented.len() == 18 && presented.starts_with(ours))
    }
}

fn parse_xml(body: &[u8]) -> Result<Document<'_>, WebhookRefusal> {
    const DOCTYPE: &[u8] = b"<!doctype";
    if body
        .windows(DOCTYPE.len())
        .any(|w| w.eq_ignore_ascii_case(DOCTYPE))
    {
        return Err(malformed("body", "a document type declaration is not allowed"));
    }
    let text = std::str::from_utf8(body).map_err(|_| malformed("body", "not UTF-8"))?;
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
        ..ParsingOptions::default()
    };
    // The parser's messages quote names from the input: not passed on.
    Document::parse_with_options(text, options).map_err(|e| match e {
        roxmltree::Error::DtdDetected => malformed("body", "a document type declaration is not allowed"),
        roxmltree::Error::NodesLimitReached => malformed("body", "too many XML nodes"),
        _ => malformed("body", "not well-formed XML"),
    })
}

/// `Envelope/Body/notifications`.
fn notifications<'a, 'i>(doc: &'a Document<'i>) -> Result<Node<'a, 'i>, WebhookRefusal> {
    let envelope = doc.root_element();
    if !is(envelope, SOAP_NS, "Envelope") {
        return Err(malformed("Envelope", "not a SOAP envelope"));
    }
    let body = required(envelope, SOAP_NS, "Body", "Body")?;
    required(body, OUTBOUND_NS, "notifications", "notifications")
}

/// Reads the `Notification`s of a verified message.
fn read(notifications: Node<'_, '_>) -> Result<Vec<Hint>, WebhookRefusal> {
    let all: Vec<Node<'_, '_>> = notifications
        .children()
        .filter(|n| is(*n, OUTBOUND_NS, "Notification"))
        .take(MAX_ENTRIES + 1)
        .collect();
    if all.len() > MAX_ENTRIES {
        return Err(malformed("notifications", "more than 100 Notification elements"));
    }
    if all.is_empty() {
        return Err(malformed("notifications", "no Notification"));
    }
    let mut hints = Vec::with_capacity(all.len());
    for (i, n) in all.into_iter().enumerate() {
        if let Some(hint) = notification(n, i + 1)? {
            hints.push(hint);
        }
    }
    Ok(hints)
}

/// One `Notification` (the `i`th, from 1, for messages); `None` for an object not synced.
fn notification(n: Node<'_, '_>, i: usize) -> Result<Option<Hint>, WebhookRefusal> {
    let part = |p: &str| format!("Notification[{i}]/{p}");
    let id = text(required(n, OUTBOUND_NS, "Id", &part("Id"))?);
    let id = delivery_id(&part("Id"), id.to_owned())?;
    let object = required(n, OUTBOUND_NS, "sObject", &part("sObject"))?;
    let Some(kind) = object.attribute((XSI_NS, "type")) else {
        return Err(malformed(&part("sObject"), "no xsi:type"));
    };
    // A QName: its prefix is resolved where it is written.
    let (prefix, local) = kind.split_once(':').map_or((None, kind), |(p, l)| (Some(p), l));
    if object.lookup_namespace_uri(prefix) != Some(SOBJECT_NS) {
        return Err(malformed(&part("sObject"), "xsi:type is not an sObject type"));
    }
    let entity = match local {
        "Contact" => Entity::Contact,
        "Task" => Entity::Task,
        _ => return Ok(None),
    };
    let field = |name: &str| -> Result<Option<&str>, WebhookRefusal> {
        let node = single(object, SOBJECT_NS, name)
            .map_err(|()| malformed(&part(&format!("sObject/sf:{name}")), "given more than once"))?;
        Ok(node
            .filter(|n| n.attribute((XSI_NS, "nil")) != Some("true"))
            .map(text))
    };
    let crm = field("Id")?.ok_or_else(|| malformed(&part("sObject/sf:Id"), "missing"))?;
    let occurred_at = field("LastModifiedDate")?
        .map(|t| rfc3339(&part("sObject/sf:LastModifiedDate"), t))
        .transpose()?;
    Ok(Some(Hint {
        vendor: "salesforce".to_owned(),
        delivery_id: id,
        entity,
        crm_id: crm_id(&part("sObject/sf:Id"), crm)?,
        client_id: client_id(field("Backbone_Client_Id__c")?),
        event: "outbound_message".to_owned(),
        occurred_at,
    }))
}

fn is(n: Node<'_, '_>, ns: &str, name: &str) -> bool {
    n.is_element() && n.tag_name().namespace() == Some(ns) && n.tag_name().name() == name
}

/// The one child element `{ns}name`: `Err` when there are several.
fn single<'a, 'i>(parent: Node<'a, 'i>, ns: &str, name: &str) -> Result<Option<Node<'a, 'i>>, ()> {
    let mut found = parent.children().filter(|n| is(*n, ns, name));
    let first = found.next();
    match found.next() {
        Some(_) => Err(()),
        None => Ok(first),
    }
}

fn required<'a, 'i>(
    parent: Node<'a, 'i>,
    ns: &str,
    name: &str,
    part: &str,
) -> Result<Node<'a, 'i>, WebhookRefusal> {
    single(parent, ns, name)
        .map_err(|()| malformed(part, "given more than once"))?
        .ok_or_else(|| malformed(part, "missing"))
}

/// An element's text, without the whitespace around it.
fn text<'a>(n: Node<'a, '_>) -> &'a str {
    n.text().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_malformed, request};
    use super::*;
    use reqwest::header::HeaderMap;

    const PATH: &str = "sf-path-secret-0123456789";
    const ORG: &str = "00D000000000001AAA";

    fn verifier_for(org: &str) -> Verifier {
        Verifier::new(&SalesforceWebhook {
            path_secret: SecretString::from(PATH),
            organization_id: org.to_owned(),
        })
        .expect("valid")
    }

    fn verify_at(path: Option<&str>, body: &str) -> Result<Vec<Hint>, WebhookRefusal> {
        let headers = HeaderMap::new();
        verifier_for(ORG).verify(
            path,
            &request("/webhooks/salesforce/x", &headers, body.as_bytes()),
        )
    }

    fn verify(body: &str) -> Result<Vec<Hint>, WebhookRefusal> {
        verify_at(Some(PATH), body)
    }

    fn contact(id: &str, sf_id: &str, client: &str) -> String {
        format!(
            r#"<Notification><Id>{id}</Id><sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
                <sf:Id>{sf_id}</sf:Id>{client}<sf:LastModifiedDate>2026-12-02T10:00:00.000Z</sf:LastModifiedDate>
               </sObject></Notification>"#
        )
    }

    fn task(id: &str, sf_id: &str) -> String {
        format!(
            r#"<Notification><Id>{id}</Id><sObject xsi:type="sf:Task" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
                <sf:Id>{sf_id}</sf:Id><sf:Backbone_Task_Id__c>t-1</sf:Backbone_Task_Id__c></sObject></Notification>"#
        )
    }

    fn message_from(org: &str, notifications: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{org}</OrganizationId>
   <ActionId>04k000000000001AAA</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/62.0/00D000000000001</EnterpriseUrl>
   <PartnerUrl>https://example.my.salesforce.com/services/Soap/u/62.0/00D000000000001</PartnerUrl>
   {notifications}
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>"#
        )
    }

    fn message(notifications: &str) -> String {
        message_from(ORG, notifications)
    }

    const CLIENT: &str = "<sf:Backbone_Client_Id__c>c-1</sf:Backbone_Client_Id__c>";

    #[test]
    fn a_contact_notification_gives_one_hint() {
        let hints = verify(&message(&contact(
            "04l000000000001AAA",
            "003000000000001AAA",
            CLIENT,
        )))
        .expect("verified");
        assert_eq!(
            hints,
            vec![Hint {
                vendor: "salesforce".into(),
                delivery_id: "04l000000000001AAA".into(),
                entity: Entity::Contact,
                crm_id: "003000000000001AAA".into(),
                client_id: Some(backbone_sync::clients::ClientId::parse("c-1").expect("valid")),
                event: "outbound_message".into(),
                occurred_at: Some(time::macros::datetime!(2026-12-02 10:00:00 UTC)),
            }]
        );
    }

    #[test]
    fn two_notifications_give_two_hints() {
        let body = message(&format!(
            "{}{}",
            contact("04l000000000001AAA", "003000000000001AAA", ""),
            task("04l000000000002AAA", "00T000000000001AAA")
        ));
        let hints = verify(&body).expect("verified");
        let got: Vec<_> = hints
            .iter()
            .map(|h| {
                (
                    h.delivery_id.as_str(),
                    h.entity,
                    h.crm_id.as_str(),
                    h.client_id.is_some(),
                    h.occurred_at.is_some(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "04l000000000001AAA",
                    Entity::Contact,
                    "003000000000001AAA",
                    false,
                    true
                ),
                (
                    "04l000000000002AAA",
                    Entity::Task,
                    "00T000000000001AAA",
                    false,
                    false
                ),
            ]
        );
    }

    #[test]
    fn types_resolve_by_namespace_and_other_objects_are_skipped() {
        let other_prefix = r#"<Notification><Id>04l000000000003AAA</Id><sObject xsi:type="q:Contact" xmlns:q="urn:sobject.enterprise.soap.sforce.com"><q:Id>003000000000003AAA</q:Id></sObject></Notification>"#;
        let account = r#"<Notification><Id>04l000000000004AAA</Id><sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>001000000000001AAA</sf:Id></sObject></Notification>"#;
        let hints = verify(&message(&format!("{other_prefix}{account}"))).expect("verified");
        assert_eq!(hints.len(), 1);
        assert_eq!(
            (hints[0].crm_id.as_str(), hints[0].entity),
            ("003000000000003AAA", Entity::Contact)
        );
        let nil = "<sf:Backbone_Client_Id__c xsi:nil=\"true\"/>";
        let hints = verify(&message(&contact(
            "04l000000000005AAA",
            "003000000000005AAA",
            nil,
        )))
        .expect("nil");
        assert_eq!(hints[0].client_id, None);
    }

    #[test]
    fn a_fifteen_character_org_id_matches_the_eighteen_character_one() {
        let headers = HeaderMap::new();
        let body = message(&contact("04l000000000001AAA", "003000000000001AAA", ""));
        let req = request("/webhooks/salesforce/x", &headers, body.as_bytes());
        assert!(verifier_for("00D000000000001").verify(Some(PATH), &req).is_ok());
        assert_eq!(
            verifier_for("00D000000000002").verify(Some(PATH), &req),
            Err(WebhookRefusal::Forbidden)
        );
    }

    #[test]
    fn no_path_secret_is_unauthenticated_and_a_wrong_one_forbidden() {
        let body = message(&contact("04l000000000001AAA", "003000000000001AAA", ""));
        assert_eq!(verify_at(None, &body), Err(WebhookRefusal::Unauthenticated));
        assert_eq!(verify_at(Some(""), &body), Err(WebhookRefusal::Unauthenticated));
        assert_eq!(
            verify_at(Some("sf-path-secret-012345678"), &body),
            Err(WebhookRefusal::Forbidden)
        );
        assert_eq!(
            verify_at(Some("wrong"), "<!DOCTYPE x>"),
            Err(WebhookRefusal::Forbidden)
        );
    }

    #[test]
    fn another_or_no_organization_is_forbidden() {
        let n = contact("04l000000000001AAA", "003000000000001AAA", "");
        assert_eq!(
            verify(&message_from("00D000000000002AAA", &n)),
            Err(WebhookRefusal::Forbidden)
        );
        assert_eq!(verify(&message_from("", &n)), Err(WebhookRefusal::Forbidden));
        let twice = message(&format!("<OrganizationId>{ORG}</OrganizationId>{n}"));
        assert_eq!(verify(&twice), Err(WebhookRefusal::Forbidden));
        let none = message(&n).replace(&format!("<OrganizationId>{ORG}</OrganizationId>"), "");
        assert_eq!(verify(&none), Err(WebhookRefusal::Forbidden));
    }

    #[test]
    fn a_document_type_declaration_is_refused() {
        let lol = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>"#;
        let body = message(&contact(
            "04l000000000001AAA",
            "003000000000001AAA",
            "<sf:Backbone_Client_Id__c>&lol2;</sf:Backbone_Client_Id__c>",
        ));
        let body = body.replacen(r#"<?xml version="1.0" encoding="UTF-8"?>"#, lol, 1);
        assert_malformed(verify(&body), "document type", &["lol"]);
        let empty = message("").replacen(
            "<soapenv:Envelope",
            "<!doctype soapenv:Envelope><soapenv:Envelope",
            1,
        );
        assert_malformed(verify(&empty), "document type", &[]);
        let upper = message("").replacen(
            "<soapenv:Envelope",
            "<!DOCTYPE soapenv:Envelope><soapenv:Envelope",
            1,
        );
        assert_malformed(verify(&upper), "document type", &[]);
        // An entity that is not declared is no better.
        let undeclared = message(&contact(
            "04l000000000001AAA",
            "003000000000001AAA",
            "<sf:Backbone_Client_Id__c>&xxe;</sf:Backbone_Client_Id__c>",
        ));
        assert_malformed(verify(&undeclared), "body", &["xxe"]);
    }

    #[test]
    fn at_most_a_hundred_notifications() {
        let many = |n: usize| -> String {
            (0..n)
                .map(|i| contact(&format!("04l{i:015}"), &format!("003{i:015}"), ""))
                .collect()
        };
        assert_eq!(
            verify(&message(&many(MAX_ENTRIES))).expect("a hundred").len(),
            MAX_ENTRIES
        );
        assert_malformed(verify(&message(&many(MAX_ENTRIES + 1))), "more than 100", &[]);
        assert_malformed(verify(&message("")), "notifications", &[]);
    }

    #[test]
    fn a_verified_message_of_another_shape_is_malformed_without_its_values() {
        let secret_value = "VALUE-NOT-TO-ECHO";
        let good = contact("04l000000000001AAA", "003000000000001AAA", "");
        let cases = [
            (format!("<{secret_value}/>"), "Envelope"),
            (format!("<a>{secret_value}</b>"), "body"),
            (message(&good).replace("soapenv:Body", "soapenv:Bdy"), "Body"),
            (
                message(&good).replace("2005/09/outbound", "2005/09/other"),
                "notifications",
            ),
            (
                message(&good.replace("<Id>04l000000000001AAA</Id>", "")),
                "Notification[1]/Id",
            ),
            (
                message(&good.replace("04l000000000001AAA", &format!("{secret_value} x"))),
                "Notification[1]/Id",
            ),
            (
                message(&good.replace("003000000000001AAA", &format!("{secret_value} x"))),
                "Notification[1]/sObject/sf:Id",
            ),
            (
                message(&good.replace("<sf:Id>003000000000001AAA</sf:Id>", "")),
                "Notification[1]/sObject/sf:Id",
            ),
            (
                message(&good.replace("2026-12-02T10:00:00.000Z", secret_value)),
                "sf:LastModifiedDate",
            ),
            (
                message(&good.replace(" xsi:type=\"sf:Contact\"", "")),
                "Notification[1]/sObject",
            ),
            (
                message(&good.replace("sf:Contact", &format!("{secret_value}:Contact"))),
                "Notification[1]/sObject",
            ),
            (
                message(&format!(
                    "{good}{}",
                    good.replace("<sf:Id>", "<sf:Id>1</sf:Id><sf:Id>")
                )),
                "Notification[2]/sObject/sf:Id",
            ),
        ];
        for (body, part) in cases {
            assert_malformed(verify(&body), part, &[secret_value, PATH]);
        }
        let not_utf8 = [b"<a>".as_slice(), &[0xff, 0xfe], b"</a>"].concat();
        let headers = HeaderMap::new();
        assert_malformed(
            verifier_for(ORG).verify(Some(PATH), &request("/x", &headers, &not_utf8)),
            "body",
            &[],
        );
    }

    #[test]
    fn the_configuration_needs_a_long_url_safe_secret_and_an_org_id() {
        let cfg = |secret: &str, org: &str| SalesforceWebhook {
            path_secret: SecretString::from(secret),
            organization_id: org.to_owned(),
        };
        assert!(Verifier::new(&cfg(PATH, ORG)).is_ok());
        assert!(Verifier::new(&cfg(PATH, "00D000000000001")).is_ok());
        assert!(Verifier::new(&cfg("short", ORG)).is_err());
        assert!(Verifier::new(&cfg(PATH, "00D00000000000")).is_err());
        assert!(Verifier::new(&cfg(PATH, "00D-00000000001AAA")).is_err());
    }
}
