//! The body of one webhook in each vendor's shape.
//!
//! - Generic: JSON `{"deliveryId","event","entity","id","externalId","occurredAt"}`; events
//!   `contact.created`, `contact.updated`, and `task.updated` for every task change (creation
//!   included).
//! - Bitrix24: a form with `event` (`ONCRMCONTACTADD`, `ONCRMCONTACTUPDATE`, and
//!   `ONCRMACTIVITYUPDATE` for every task change), `event_handler_id`, `data[FIELDS][ID]`, `ts`
//!   (the record's modification time) and `auth[domain|member_id|application_token]`.
//! - Kommo: a form with `contacts[add|update][0][id|last_modified|account_id]` or
//!   `tasks[update][0][…]`, and `account[subdomain|id]`.
//! - Salesforce: a SOAP Outbound Message with one `Notification` (`sf:Contact` or `sf:Task`
//!   with `Id`, the External ID field and `LastModifiedDate`).

use super::{Credentials, Delivery};
use crate::people::{rfc3339_ms, Change, Entity};
use bytes::Bytes;
use serde_json::json;

pub(super) fn delivery(credentials: &Credentials, change: &Change, notification: u64) -> Delivery {
    match credentials {
        Credentials::Generic { .. } => generic(change),
        Credentials::Bitrix24 {
            member_id,
            application_token,
            domain,
        } => bitrix24(change, domain, member_id, application_token),
        Credentials::Kommo {
            account_id,
            subdomain,
        } => kommo(change, *account_id, subdomain),
        Credentials::Salesforce { organization_id } => salesforce(change, organization_id, notification),
    }
}

fn generic(c: &Change) -> Delivery {
    let (event, entity) = match (c.entity, c.created) {
        (Entity::Contact, true) => ("contact.created", "contact"),
        (Entity::Contact, false) => ("contact.updated", "contact"),
        (Entity::Task, _) => ("task.updated", "task"),
    };
    let body = json!({"deliveryId": uuid::Uuid::new_v4().to_string(), "event": event, "entity": entity,
        "id": c.crm_id, "externalId": c.external_id, "occurredAt": rfc3339_ms(c.at)});
    Delivery {
        content_type: "application/json",
        body: Bytes::from(body.to_string()),
    }
}

fn bitrix24(c: &Change, domain: &str, member_id: &str, token: &str) -> Delivery {
    let (event, handler) = match (c.entity, c.created) {
        (Entity::Contact, true) => ("ONCRMCONTACTADD", "11"),
        (Entity::Contact, false) => ("ONCRMCONTACTUPDATE", "12"),
        (Entity::Task, _) => ("ONCRMACTIVITYUPDATE", "13"),
    };
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("event", event)
        .append_pair("event_handler_id", handler)
        .append_pair("data[FIELDS][ID]", &c.crm_id)
        .append_pair("ts", &c.at.unix_timestamp().to_string())
        .append_pair("auth[domain]", domain)
        .append_pair("auth[member_id]", member_id)
        .append_pair("auth[application_token]", token)
        .finish();
    Delivery {
        content_type: "application/x-www-form-urlencoded",
        body: Bytes::from(body),
    }
}

fn kommo(c: &Change, account_id: u64, subdomain: &str) -> Delivery {
    let (entity, action) = match (c.entity, c.created) {
        (Entity::Contact, true) => ("contacts", "add"),
        (Entity::Contact, false) => ("contacts", "update"),
        (Entity::Task, _) => ("tasks", "update"),
    };
    let key = |k: &str| format!("{entity}[{action}][0][{k}]");
    let account = account_id.to_string();
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair(&key("id"), &c.crm_id)
        .append_pair(&key("last_modified"), &c.at.unix_timestamp().to_string())
        .append_pair(&key("account_id"), &account)
        .append_pair("account[subdomain]", subdomain)
        .append_pair("account[id]", &account)
        .finish();
    Delivery {
        content_type: "application/x-www-form-urlencoded",
        body: Bytes::from(body),
    }
}

/// Escapes text for XML content.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// An 18-character Outbound Message notification id.
pub(super) fn notification_id(n: u64) -> String {
    format!("04lSIM{n:09}AAA")
}

fn salesforce(c: &Change, org: &str, notification: u64) -> Delivery {
    let (sobject, ext_field, action) = match c.entity {
        Entity::Contact => ("Contact", "Backbone_Client_Id__c", "04k000000000001AAA"),
        Entity::Task => ("Task", "Backbone_Task_Id__c", "04k000000000002AAA"),
    };
    let org15 = &org[..org.len().min(15)];
    let ext = c
        .external_id
        .as_deref()
        .map(|e| format!("\n      <sf:{ext_field}>{}</sf:{ext_field}>", xml(e)))
        .unwrap_or_default();
    let modified =
        c.at.to_offset(time::UtcOffset::UTC)
            .format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .unwrap_or_default();
    let body = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{org}</OrganizationId>
   <ActionId>{action}</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://crm-sim.my.salesforce.com/services/Soap/c/62.0/{org15}</EnterpriseUrl>
   <PartnerUrl>https://crm-sim.my.salesforce.com/services/Soap/u/62.0/{org15}</PartnerUrl>
   <Notification>
    <Id>{id}</Id>
    <sObject xsi:type="sf:{sobject}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
      <sf:Id>{crm_id}</sf:Id>{ext}
      <sf:LastModifiedDate>{modified}</sf:LastModifiedDate>
    </sObject>
   </Notification>
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>
"#,
        org = xml(org),
        id = notification_id(notification),
        crm_id = xml(&c.crm_id),
    );
    Delivery {
        content_type: "text/xml; charset=utf-8",
        body: Bytes::from(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn change(entity: Entity, created: bool, ext: Option<&str>) -> Change {
        Change {
            entity,
            created,
            crm_id: "82".into(),
            external_id: ext.map(str::to_owned),
            at: datetime!(2025-12-02 10:00 UTC),
        }
    }

    fn form(d: &Delivery) -> Vec<(String, String)> {
        form_urlencoded::parse(&d.body).into_owned().collect()
    }

    #[test]
    fn bitrix24_sends_the_event_the_id_the_time_and_the_application_token() {
        let d = bitrix24(
            &change(Entity::Contact, false, None),
            "acme.bitrix24.ru",
            "m1",
            "tok",
        );
        let pairs = form(&d);
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("event"), Some("ONCRMCONTACTUPDATE"));
        assert_eq!(get("data[FIELDS][ID]"), Some("82"));
        assert_eq!(get("ts"), Some("1764669600"));
        assert_eq!(get("auth[application_token]"), Some("tok"));
        assert_eq!(get("auth[member_id]"), Some("m1"));
        assert_eq!(get("auth[domain]"), Some("acme.bitrix24.ru"));
        let add = form(&bitrix24(&change(Entity::Contact, true, None), "d", "m", "t"));
        assert_eq!(add[0], ("event".into(), "ONCRMCONTACTADD".into()));
    }

    #[test]
    fn kommo_names_the_entity_and_the_action() {
        let pairs = form(&kommo(&change(Entity::Task, true, None), 7, "acme"));
        assert_eq!(
            pairs,
            [
                ("tasks[update][0][id]", "82"),
                ("tasks[update][0][last_modified]", "1764669600"),
                ("tasks[update][0][account_id]", "7"),
                ("account[subdomain]", "acme"),
                ("account[id]", "7"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn salesforce_escapes_the_external_id() {
        let d = salesforce(
            &change(Entity::Contact, false, Some("a<b&c")),
            "00D000000000001AAA",
            3,
        );
        let body = String::from_utf8(d.body.to_vec()).unwrap();
        assert!(body.contains("<sf:Backbone_Client_Id__c>a&lt;b&amp;c</sf:Backbone_Client_Id__c>"));
        assert!(body.contains("<Id>04lSIM000000003AAA</Id>"));
        assert!(body.contains("<sf:LastModifiedDate>2025-12-02T10:00:00.000Z</sf:LastModifiedDate>"));
        assert_eq!(notification_id(3).len(), 18);
    }
}
