//! Client cards, tasks and interaction history ([`backbone_sync::clients::ClientCrm`]) against
//! each vendor's documented HTTP shapes, wiremock playing the vendor: the exact bodies sent, the
//! mapping back to our field set, `X-Request-Id`, and how refusals are classified.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bitrix24;
mod generic;
mod kommo;
mod salesforce;

use backbone_crm::salesforce::SalesforceAuth;
use backbone_crm::{
    Bitrix24Config, Bitrix24Crm, GenericCrmConfig, GenericRestCrm, KommoConfig, KommoCrm, SalesforceConfig,
    SalesforceCrm,
};
use backbone_sync::clients::{
    Card, ClientId, Direction, Field, Interaction, InteractionChannel, InteractionId, Task, TaskId,
    TaskState, Value, WriteContext,
};
use backbone_sync::mapping::{CrmMapping, FieldNames, MappingConfig};
use secrecy::SecretString;
use serde_json::json;
use time::OffsetDateTime;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// The request id every write in these tests carries.
pub const RID: &str = "req-1.a:b";

pub fn ctx() -> WriteContext<'static> {
    WriteContext { request_id: RID }
}

pub fn client(id: &str) -> ClientId {
    ClientId::parse(id).unwrap()
}

/// 2026-12-02T10:00:00Z.
pub fn at() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_796_205_600).unwrap()
}

/// 2026-12-05T15:00:00Z.
pub const DUE_UNIX: i64 = 1_796_482_800;

/// Every field of the card set.
pub fn full_card() -> Card {
    Card::default()
        .with(Field::FirstName, Value::text("Ada"))
        .with(Field::LastName, Value::text("Lovelace"))
        .with(Field::Phone, Value::text("+79991234567"))
        .with(Field::Email, Value::text("ada@example.com"))
        .with(Field::Manager, Value::text("6"))
        .with(Field::Segment, Value::text("vip"))
        .with(Field::ConsentSms, Value::Flag(true))
        .with(Field::ConsentEmail, Value::Flag(false))
}

pub fn task(state: TaskState) -> Task {
    Task {
        task_id: TaskId::parse("t-1").unwrap(),
        client_id: client("c-1"),
        title: "Call back".into(),
        due_at: Some(OffsetDateTime::from_unix_timestamp(DUE_UNIX).unwrap()),
        state,
        assignee: Some("6".into()),
    }
}

pub fn interaction() -> Interaction {
    Interaction {
        interaction_id: InteractionId::parse("i-1").unwrap(),
        client_id: client("c-1"),
        channel: InteractionChannel::Call,
        direction: Direction::Inbound,
        text: "Asked about the delivery".into(),
        at: at(),
    }
}

/// The comment or note text of [`interaction`].
pub const INTERACTION_LINE: &str = "[call/inbound 2026-12-02T10:00:00Z] Asked about the delivery";
/// The line with our interaction id, for CRMs that keep no external id on notes.
pub const MARKED_INTERACTION_LINE: &str =
    "[call/inbound 2026-12-02T10:00:00Z] Asked about the delivery [ref i-1]";

pub fn has_request_id(req: &Request) -> bool {
    req.headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == RID)
}

/// Reads carry an `X-Request-Id` of their own (no change behind them).
pub fn has_fresh_request_id(req: &Request) -> bool {
    req.headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| uuid::Uuid::parse_str(v).is_ok())
}

fn mapping(names: [&str; 5]) -> CrmMapping {
    CrmMapping::new(MappingConfig {
        fields: FieldNames {
            client_id: names[0].into(),
            shipment_id: names[1].into(),
            status: names[2].into(),
            timestamp: names[3].into(),
            event_id: names[4].into(),
        },
        ..MappingConfig::default()
    })
    .unwrap()
}

pub const GENERIC_TOKEN: &str = "test-token-0123456789";
pub const GENERIC_SECRET: &str = "test-signing-secret-0123456789";

pub fn generic(server: &MockServer) -> GenericRestCrm {
    let cfg = GenericCrmConfig {
        base_url: server.uri(),
        token: SecretString::from(GENERIC_TOKEN),
        signing_secret: SecretString::from(GENERIC_SECRET),
        timeout_ms: 2000,
        connect_timeout_ms: 500,
    };
    GenericRestCrm::new(&cfg, CrmMapping::new(MappingConfig::default()).unwrap()).unwrap()
}

pub fn bitrix24(server: &MockServer) -> Bitrix24Crm {
    let cfg = Bitrix24Config {
        portal_url: server.uri(),
        webhook_token: SecretString::from("wh0123456789abcd"),
        timeout_ms: 2000,
        connect_timeout_ms: 500,
        ..Bitrix24Config::default()
    };
    Bitrix24Crm::new(
        &cfg,
        mapping([
            "ufCrmClientId",
            "title",
            "stageId",
            "ufCrmStatusAt",
            "ufCrmEventId",
        ]),
    )
    .unwrap()
}

/// A Salesforce client using client credentials, with the token endpoint mounted.
pub async fn salesforce(server: &MockServer) -> SalesforceCrm {
    Mock::given(method("POST"))
        .and(path("/services/oauth2/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "00Dxx!AR.session", "instance_url": server.uri(),
            "token_type": "Bearer", "id": "https://login.salesforce.com/id/00D/005"})))
        .mount(server)
        .await;
    let cfg = SalesforceConfig {
        login_url: server.uri(),
        auth: SalesforceAuth::ClientCredentials,
        client_id: "3MVG9consumerkey".into(),
        client_secret: SecretString::from("consumer-secret-0123456789"),
        timeout_ms: 2000,
        connect_timeout_ms: 500,
        per_second: 1000.0,
        burst: 100,
        ..SalesforceConfig::default()
    };
    SalesforceCrm::new(
        &cfg,
        mapping([
            "Client_Id__c",
            "Shipment_Id__c",
            "Status__c",
            "Status_At__c",
            "Event_Id__c",
        ]),
    )
    .unwrap()
}

pub fn kommo(server: &MockServer) -> KommoCrm {
    let cfg = KommoConfig {
        base_url: server.uri(),
        access_token: SecretString::from("long-lived-token-0123456789"),
        timeout_ms: 2000,
        connect_timeout_ms: 500,
        ..KommoConfig::default()
    };
    KommoCrm::new(&cfg, mapping(["cf:101", "cf:102", "cf:103", "cf:104", "cf:105"])).unwrap()
}
