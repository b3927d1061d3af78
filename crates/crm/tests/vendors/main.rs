//! Vendor adapters against their documented HTTP shapes (wiremock plays each vendor), and the
//! shared contract suite run against every adapter of the CRM port, the generic one included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bitrix24;
mod contract;
mod fakes;
mod kommo;
mod salesforce;

use backbone_crm::{
    Bitrix24Config, Bitrix24Crm, GenericCrmConfig, GenericRestCrm, KommoConfig, KommoCrm, SalesforceConfig,
    SalesforceCrm,
};
use backbone_sync::event::{ClientId, EventId, ShipmentId};
use backbone_sync::mapping::{CrmMapping, CrmStatusWrite, FieldNames, MappingConfig};
use secrecy::SecretString;
use time::OffsetDateTime;
use wiremock::MockServer;

/// A throwaway RSA key for the JWT bearer tests (not used anywhere else).
pub const TEST_RSA_KEY: &str = include_str!("test_rsa_key.pem");

pub fn mapping(fields: FieldNames) -> CrmMapping {
    CrmMapping::new(MappingConfig {
        fields,
        ..MappingConfig::default()
    })
    .unwrap()
}

pub fn fields(names: [&str; 5]) -> FieldNames {
    FieldNames {
        client_id: names[0].into(),
        shipment_id: names[1].into(),
        status: names[2].into(),
        timestamp: names[3].into(),
        event_id: names[4].into(),
    }
}

pub fn bitrix24_fields() -> FieldNames {
    fields([
        "ufCrmClientId",
        "title",
        "stageId",
        "ufCrmStatusAt",
        "ufCrmEventId",
    ])
}

pub fn salesforce_fields() -> FieldNames {
    fields([
        "Client_Id__c",
        "Shipment_Id__c",
        "Status__c",
        "Status_At__c",
        "Event_Id__c",
    ])
}

pub fn kommo_fields() -> FieldNames {
    fields(["cf:101", "cf:102", "cf:103", "cf:104", "cf:105"])
}

pub fn generic(server: &MockServer) -> GenericRestCrm {
    let cfg = GenericCrmConfig {
        base_url: server.uri(),
        token: SecretString::from("test-token-0123456789"),
        signing_secret: SecretString::from("test-signing-secret-0123456789"),
        timeout_ms: 2000,
        connect_timeout_ms: 500,
    };
    GenericRestCrm::new(&cfg, CrmMapping::new(MappingConfig::default()).unwrap()).unwrap()
}

pub fn bitrix24_config(server: &MockServer) -> Bitrix24Config {
    Bitrix24Config {
        portal_url: server.uri(),
        webhook_token: SecretString::from("wh0123456789abcd"),
        timeout_ms: 2000,
        connect_timeout_ms: 500,
        ..Bitrix24Config::default()
    }
}

pub fn bitrix24(server: &MockServer) -> Bitrix24Crm {
    Bitrix24Crm::new(&bitrix24_config(server), mapping(bitrix24_fields())).unwrap()
}

pub fn salesforce_config(server: &MockServer) -> SalesforceConfig {
    SalesforceConfig {
        login_url: server.uri(),
        client_id: "3MVG9consumerkey".into(),
        username: "integration@example.com".into(),
        private_key_pem: SecretString::from(TEST_RSA_KEY),
        timeout_ms: 2000,
        connect_timeout_ms: 500,
        per_second: 1000.0,
        burst: 100,
        ..SalesforceConfig::default()
    }
}

pub fn salesforce(server: &MockServer) -> SalesforceCrm {
    SalesforceCrm::new(&salesforce_config(server), mapping(salesforce_fields())).unwrap()
}

pub fn kommo_config(server: &MockServer) -> KommoConfig {
    KommoConfig {
        base_url: server.uri(),
        access_token: SecretString::from("long-lived-token-0123456789"),
        timeout_ms: 2000,
        connect_timeout_ms: 500,
        ..KommoConfig::default()
    }
}

pub fn kommo(server: &MockServer) -> KommoCrm {
    KommoCrm::new(&kommo_config(server), mapping(kommo_fields())).unwrap()
}

pub fn sid(s: &str) -> ShipmentId {
    ShipmentId::parse(s).unwrap()
}

/// A write at `minute` past 10:00 (with milliseconds, which every vendor keeps).
pub fn write(event: &str, shipment: &str, status: &str, minute: i64) -> CrmStatusWrite {
    CrmStatusWrite {
        event_id: EventId::parse(event).unwrap(),
        shipment_id: sid(shipment),
        client_id: ClientId::parse("c-1").unwrap(),
        crm_status: status.into(),
        timestamp: OffsetDateTime::from_unix_timestamp(1_793_527_200 + minute * 60).unwrap()
            + time::Duration::milliseconds(123),
        correlation_id: format!("corr-{event}"),
    }
}

/// A port nobody listens on.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
