//! The two-way sync end to end, per CRM dialect: crm-sync in process with `[two_way]` on (API,
//! webhooks, relay, dispatcher, processor, `All_Clients` consumer) on the real broker and
//! PostgreSQL, crm-sim in the vendor's dialect sending its webhooks back to crm-sync.

use backbone_tests::*;
use crm_sim::Dialect;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const API_TOKEN: &str = "e2e-api-token-0123456789abcdef";
const GENERIC_HOOK_SECRET: &str = "e2e-webhook-secret-0123456789";
const BITRIX_MEMBER: &str = "e2e-member";
const BITRIX_APP_TOKEN: &str = "e2e-app-token-0123456789";
const KOMMO_PATH: &str = "e2e-kommo-path-secret-0123";
const KOMMO_ACCOUNT: u64 = 7_039_099;
const SF_PATH: &str = "e2e-sf-path-secret-0123456";
const SF_ORG: &str = "00D000000000001AAA";
const WAIT: Duration = Duration::from_secs(30);

/// A port free now (taken again by the service right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// crm-sync with the two-way sync on, for this scope and dialect.
pub fn two_way_config(
    scope: &Scope,
    d: Dialect,
    sim_url: &str,
    api_port: u16,
) -> anyhow::Result<crm_sync::Config> {
    let mut cfg = crate::vendors::config(scope, d, sim_url)?;
    let id = &scope.id;
    let t = &mut cfg.two_way;
    t.enabled = true;
    t.outgoing_topic = format!("crm.outgoing.{id}");
    t.incoming_topic = format!("crm.incoming.{id}");
    t.processed_topic = format!("crm.processed.{id}");
    t.failed_topic = format!("crm.failed.{id}");
    t.clients_topic = format!("All_Clients.{id}");
    t.dispatcher_group = format!("dispatcher-{id}");
    t.processor_group = format!("processor-{id}");
    t.clients_group = format!("clients-{id}");
    t.api.listen = format!("127.0.0.1:{api_port}").parse()?;
    t.api.tokens.insert("e2e".into(), SecretString::from(API_TOKEN));
    t.webhooks = serde_json::from_value(webhook_config())?;
    Ok(cfg)
}

/// `[two_way.webhooks]`: the credentials crm-sim's webhooks carry, for every dialect.
pub fn webhook_config() -> Value {
    json!({
        "generic": {"secret": GENERIC_HOOK_SECRET},
        "bitrix24": {"application_tokens": {BITRIX_MEMBER: BITRIX_APP_TOKEN}},
        "kommo": {"path_secret": KOMMO_PATH, "account_id": KOMMO_ACCOUNT.to_string()},
        "salesforce": {"path_secret": SF_PATH, "organization_id": SF_ORG},
    })
}

/// Where crm-sim sends a dialect's webhooks, with the credentials crm-sync checks.
pub fn webhook_target(d: Dialect, api: &str) -> Value {
    match d {
        Dialect::Generic => json!({"url": format!("{api}/webhooks/generic"), "secret": GENERIC_HOOK_SECRET}),
        Dialect::Bitrix24 => json!({"url": format!("{api}/webhooks/bitrix24"), "member_id": BITRIX_MEMBER,
            "application_token": BITRIX_APP_TOKEN, "domain": "e2e.bitrix24.test"}),
        Dialect::Kommo => json!({"url": format!("{api}/webhooks/kommo/{KOMMO_PATH}"),
            "account_id": KOMMO_ACCOUNT, "subdomain": "acme"}),
        Dialect::Salesforce => json!({"url": format!("{api}/webhooks/salesforce/{SF_PATH}"),
            "organization_id": SF_ORG}),
    }
}

pub struct TwoWay {
    pub scope: Scope,
    pub dialect: Dialect,
    pub sim_url: String,
    pub api: String,
    pub http: reqwest::Client,
    stop: CancellationToken,
    service: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TwoWay {
    pub async fn start(name: &str, d: Dialect) -> anyhow::Result<Self> {
        Self::start_with(name, d, |_| {}).await
    }

    /// [`TwoWay::start`] with the configuration changed by `tune` first.
    pub async fn start_with(
        name: &str,
        d: Dialect,
        tune: impl FnOnce(&mut crm_sync::Config),
    ) -> anyhow::Result<Self> {
        let scope = Scope::new(&format!("tw_{name}_{}", d.name()));
        let (_sim, sim_url) = crate::vendors::start_vendor_sim().await?;
        let port = free_port();
        let mut cfg = two_way_config(&scope, d, &sim_url, port)?;
        tune(&mut cfg);
        let stop = CancellationToken::new();
        let service = tokio::spawn(crm_sync::run(cfg, stop.clone()));
        let api = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let probe = http.clone();
        let openapi = format!("{api}/openapi.json");
        eventually(WAIT, "the two-way API", || {
            let (probe, openapi) = (probe.clone(), openapi.clone());
            async move { Ok(probe.get(&openapi).send().await?.status().is_success()) }
        })
        .await?;
        let me = Self {
            scope,
            dialect: d,
            sim_url,
            api,
            http,
            stop,
            service,
        };
        me.webhooks_on().await?;
        Ok(me)
    }

    pub async fn webhooks_on(&self) -> anyhow::Result<()> {
        let r = self
            .http
            .put(format!("{}/sim/webhooks/{}", self.sim_url, self.dialect.name()))
            .json(&webhook_target(self.dialect, &self.api))
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "crm-sim refused the webhook target: {}",
            r.status()
        );
        Ok(())
    }

    pub async fn webhooks_off(&self) -> anyhow::Result<()> {
        self.http
            .delete(format!("{}/sim/webhooks/{}", self.sim_url, self.dialect.name()))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// A `/v1` call with the token and a fresh `Idempotency-Key`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(API_TOKEN)
            .header("idempotency-key", uuid::Uuid::new_v4().to_string());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await?;
        let status = r.status();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    pub async fn ours(&self, client: &str) -> anyhow::Result<Value> {
        let (s, b) = self
            .call(reqwest::Method::GET, &format!("/v1/clients/{client}"), None)
            .await?;
        anyhow::ensure!(s == StatusCode::OK, "GET client: {s} {b}");
        Ok(b)
    }

    /// The CRM's contact for our client, in our field names; `None` before it exists.
    pub async fn theirs(&self, client: &str) -> anyhow::Result<Option<Value>> {
        let r = self
            .http
            .get(format!("{}/sim/{}/contacts", self.sim_url, self.dialect.name()))
            .query(&[("external_id", client)])
            .send()
            .await?;
        if r.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(r.error_for_status()?.json().await?))
    }

    pub async fn edit_in_crm(&self, crm_id: &str, patch: Value) -> anyhow::Result<()> {
        self.http
            .patch(format!(
                "{}/sim/{}/contacts/{crm_id}",
                self.sim_url,
                self.dialect.name()
            ))
            .json(&patch)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    pub async fn wait_theirs(
        &self,
        client: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let mut last = None;
        let start = std::time::Instant::now();
        while start.elapsed() < WAIT {
            if let Some(c) = self.theirs(client).await? {
                if check(&c) {
                    return Ok(c);
                }
                last = Some(c);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "{}: timed out waiting for the CRM: {what}; last: {last:?}",
            self.dialect.name()
        )
    }

    pub async fn wait_ours(
        &self,
        client: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let mut last = Value::Null;
        let start = std::time::Instant::now();
        while start.elapsed() < WAIT {
            // Not there yet (404) is worth waiting for too.
            if let Ok(c) = self.ours(client).await {
                if check(&c) {
                    return Ok(c);
                }
                last = c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "{}: timed out waiting for our copy: {what}; last: {last}",
            self.dialect.name()
        )
    }

    /// Stops crm-sim's webhooks and waits until every stored webhook and outbox row is handled,
    /// so what happens next is not raced by an earlier delivery still on its way.
    pub async fn quiesce(&self, pool: &sqlx::PgPool) -> anyhow::Result<()> {
        self.webhooks_off().await?;
        let mut quiet_since: Option<std::time::Instant> = None;
        let start = std::time::Instant::now();
        while start.elapsed() < WAIT {
            let busy: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM crm_webhook WHERE processed_at IS NULL) + (SELECT count(*) FROM crm_outbox)",
            )
            .fetch_one(pool)
            .await?;
            match (busy, quiet_since) {
                (0, Some(t)) if t.elapsed() > Duration::from_millis(1500) => return Ok(()),
                (0, None) => quiet_since = Some(std::time::Instant::now()),
                (0, Some(_)) => {}
                _ => quiet_since = None,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("{}: the two-way stages did not settle", self.dialect.name())
    }

    pub async fn open_tasks(&self) -> anyhow::Result<Vec<Value>> {
        let (s, b) = self
            .call(reqwest::Method::GET, "/v1/operator-tasks?state=open", None)
            .await?;
        anyhow::ensure!(s == StatusCode::OK, "operator tasks: {s} {b}");
        let list = b.get("tasks").or(b.get("items")).cloned().unwrap_or(b);
        Ok(list.as_array().cloned().unwrap_or_default())
    }

    /// Both sides change client `client`'s segment before they hear of each other (ours
    /// `vip`, the CRM's `churned`): exactly one operator task, returned. Webhooks are off
    /// afterwards ([`TwoWay::webhooks_on`] turns them back on).
    pub async fn conflict_on_segment(
        &self,
        pool: &sqlx::PgPool,
        client: &str,
        crm_id: &str,
    ) -> anyhow::Result<Value> {
        let d = self.dialect;
        self.quiesce(pool).await?;
        self.edit_in_crm(crm_id, json!({"segment": "churned"})).await?;
        let (s, b) = self
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/clients/{client}"),
                Some(json!({"fields": {"segment": "vip"}})),
            )
            .await?;
        anyhow::ensure!(s == StatusCode::OK, "PATCH: {s} {b}");
        let mut tasks = Vec::new();
        let start = std::time::Instant::now();
        while tasks.is_empty() && start.elapsed() < WAIT {
            tasks = self.open_tasks().await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            tasks.len(),
            1,
            "{}: exactly one operator task: {tasks:?}",
            d.name()
        );
        let task = tasks.remove(0);
        assert_eq!(task["field"], "segment");
        assert_eq!(task["ours"], "vip");
        assert_eq!(task["theirs"], "churned");
        Ok(task)
    }

    /// Our card for `client` written through the API and seen in the CRM: its CRM id.
    pub async fn card_in_crm(&self, client: &str) -> anyhow::Result<String> {
        let (s, b) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/clients/{client}"),
                Some(card()),
            )
            .await?;
        anyhow::ensure!(s == StatusCode::CREATED, "PUT: {s} {b}");
        let contact = self
            .wait_theirs(client, "the card", |c| c["first_name"] == "Ada")
            .await?;
        Ok(contact["crm_id"].as_str().unwrap_or_default().to_owned())
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.service).await;
        self.scope.drop_database().await;
        Ok(())
    }
}

fn card() -> Value {
    json!({"fields": {"first_name": "Ada", "last_name": "Lovelace", "phone": "+79991234567",
        "email": "ada@example.com", "segment": "regular", "consent_sms": true, "consent_email": false}})
}

/// Our card goes out, its echo comes back and stops, a CRM edit comes in (the CRM owns the
/// manager), an edit of a field we own is written back over, and a conflict on the segment ends
/// in one operator task whose resolution reaches both sides.
async fn converges(d: Dialect) -> anyhow::Result<()> {
    let tw = TwoWay::start("converge", d).await?;
    let (s, b) = tw
        .call(reqwest::Method::PUT, "/v1/clients/c-1", Some(card()))
        .await?;
    anyhow::ensure!(s == StatusCode::CREATED, "PUT: {s} {b}");

    let contact = tw
        .wait_theirs("c-1", "the card", |c| {
            c["first_name"] == "Ada" && c["phone"] == "+79991234567"
        })
        .await?;
    assert_eq!(contact["last_name"], "Lovelace", "{contact}");
    assert_eq!(contact["email"], "ada@example.com");
    assert_eq!(contact["segment"], "regular");
    assert_eq!(contact["consent_sms"], true);
    let crm_id = contact["crm_id"].as_str().unwrap().to_owned();
    // The CRM announced our own write: the echo is processed and does not loop.
    let pool = tw.scope.wait_for_schema().await?;
    eventually(WAIT, "the echo processed", || {
        let pool = pool.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM crm_webhook WHERE processed_at IS NOT NULL")
                    .fetch_one(&pool)
                    .await?;
            Ok(n >= 1)
        }
    })
    .await?;
    let writes = tw.theirs("c-1").await?.unwrap()["writes"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = tw.theirs("c-1").await?.unwrap();
    assert_eq!(
        later["writes"].as_u64().unwrap(),
        writes,
        "{}: our write echoed back and looped: {later}",
        d.name()
    );

    // A CRM user changes the manager (the CRM owns it) and the phone (we own it).
    let manager = if d == Dialect::Salesforce {
        "005SIM000000009AAA"
    } else {
        "9"
    };
    tw.edit_in_crm(&crm_id, json!({"manager": manager, "phone": "+79990000000"}))
        .await?;
    tw.wait_ours("c-1", "the CRM's manager", |c| c["fields"]["manager"] == manager)
        .await?;
    tw.wait_theirs("c-1", "our phone written back", |c| c["phone"] == "+79991234567")
        .await?;
    assert_eq!(tw.ours("c-1").await?["fields"]["phone"], "+79991234567");

    // Both sides change the segment before they hear of each other: one operator task.
    let task = tw.conflict_on_segment(&pool, "c-1", &crm_id).await?;
    let task = &task;
    // Meanwhile each side keeps its value.
    assert_eq!(tw.ours("c-1").await?["fields"]["segment"], "vip");
    assert_eq!(tw.theirs("c-1").await?.unwrap()["segment"], "churned");
    tw.webhooks_on().await?;
    let id = task["id"].as_i64().unwrap();
    let (s, b) = tw
        .call(
            reqwest::Method::POST,
            &format!("/v1/operator-tasks/{id}/resolve"),
            Some(json!({"choice": "value", "value": "vip-returning", "by": "e2e-operator"})),
        )
        .await?;
    anyhow::ensure!(s == StatusCode::OK, "resolve: {s} {b}");
    tw.wait_theirs("c-1", "the resolution in the CRM", |c| {
        c["segment"] == "vip-returning"
    })
    .await?;
    assert_eq!(tw.ours("c-1").await?["fields"]["segment"], "vip-returning");
    assert!(tw.open_tasks().await?.is_empty());
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_conflict_log WHERE client_id = 'c-1'")
        .fetch_one(&pool)
        .await?;
    assert!(
        logged >= 2,
        "the conflict and its resolution are logged: {logged}"
    );
    tw.stop().await
}

#[tokio::test]
async fn two_way_converges_generic() -> anyhow::Result<()> {
    converges(Dialect::Generic).await
}

#[tokio::test]
async fn two_way_converges_bitrix24() -> anyhow::Result<()> {
    converges(Dialect::Bitrix24).await
}

#[tokio::test]
async fn two_way_converges_salesforce() -> anyhow::Result<()> {
    converges(Dialect::Salesforce).await
}

#[tokio::test]
async fn two_way_converges_kommo() -> anyhow::Result<()> {
    converges(Dialect::Kommo).await
}
