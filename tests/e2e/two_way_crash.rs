//! kill -9 of each two-way stage mid-flow. For each stage S, the `crm-sync` binary runs S in a
//! process of its own (`two_way.stages`, given by environment) and the other stages in a second
//! one; a stream of changes from both sides (API card changes with `Idempotency-Key`, tasks and
//! interactions, CRM users' edits announced by webhooks) is in flight when S's process is killed
//! with SIGKILL and started again. At the end every change reached the other side, nothing was
//! doubled (one contact per client, each task and interaction once in the CRM, at most one
//! operator task per client and field, one outcome per stored webhook after de-duplication by
//! `webhook_id`, one version per card change), and the outbox is empty. For the API stage the
//! client retries every request the kill cut off with the same `Idempotency-Key`: one effect each.

use crate::crash::crm_sync_binary;
use crate::two_way::{free_port, two_way_config, webhook_target, API_TOKEN};
use backbone_tests::*;
use crm_sim::Dialect;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ALL: [&str; 5] = ["api", "relay", "dispatcher", "processor", "clients"];
/// Clients driven at once, each by its own sequence of requests.
const CLIENTS: usize = 8;
/// How long any one wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(60);

/// Drops the `null`s TOML cannot hold (an absent key is the same default).
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// One crm-sync process and what it runs.
struct Proc {
    stages: Vec<&'static str>,
    metrics_port: u16,
    child: Option<Child>,
    runs: u32,
}

struct Crash {
    name: String,
    scope: Scope,
    dialect: Dialect,
    sim_url: String,
    api: String,
    http: reqwest::Client,
    file: PathBuf,
    /// The killed stage's process, and the one with every other stage.
    alone: Proc,
    rest: Proc,
}

impl Crash {
    async fn start(stage: &'static str, d: Dialect) -> anyhow::Result<Self> {
        let name = format!("twc_{stage}_{}", d.name());
        let scope = Scope::new(&name);
        let (_sim, sim_url) = crate::vendors::start_vendor_sim().await?;
        let api_port = free_port();
        let cfg = two_way_config(&scope, d, &sim_url, api_port)?;
        // The configuration as a file, secrets included (they are never serialized).
        let mut v = serde_json::to_value(&cfg)?;
        v["postgres"]["url"] = json!(scope.db_url);
        v["crm"]["generic"]["token"] = json!(TOKEN);
        v["crm"]["generic"]["signing_secret"] = json!(SECRET);
        v["crm"]["bitrix24"]["webhook_token"] = json!(crate::vendors::VENDOR_SECRET);
        v["crm"]["kommo"]["access_token"] = json!(crate::vendors::VENDOR_SECRET);
        v["two_way"]["api"]["tokens"] = json!({"e2e": API_TOKEN});
        v["two_way"]["webhooks"] = crate::two_way::webhook_config();
        let toml = toml::to_string(&toml::Value::try_from(without_nulls(v))?)?;
        let file = std::env::temp_dir().join(format!("{}.toml", scope.id));
        std::fs::write(&file, toml)?;
        let others: Vec<&'static str> = ALL.into_iter().filter(|s| *s != stage).collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut me = Self {
            name,
            scope,
            dialect: d,
            sim_url,
            api: format!("http://127.0.0.1:{api_port}"),
            http,
            file,
            alone: Proc {
                stages: vec![stage],
                metrics_port: free_port(),
                child: None,
                runs: 0,
            },
            rest: Proc {
                stages: others,
                metrics_port: free_port(),
                child: None,
                runs: 0,
            },
        };
        // One after the other: the first creates the database and migrates it.
        me.spawn(false).await?;
        me.spawn(true).await?;
        let r = me
            .http
            .put(format!("{}/sim/webhooks/{}", me.sim_url, d.name()))
            .json(&webhook_target(d, &me.api))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "webhook target: {}", r.status());
        Ok(me)
    }

    /// Starts the lone stage's process (`alone`) or the others', and waits until it is ready.
    async fn spawn(&mut self, alone: bool) -> anyhow::Result<()> {
        let p = if alone { &mut self.alone } else { &mut self.rest };
        p.runs += 1;
        let log = std::fs::File::create(std::env::temp_dir().join(format!(
            "{}-{}-{}.log",
            self.scope.id,
            p.stages.join("+"),
            p.runs
        )))?;
        let child = Command::new(crm_sync_binary())
            .env("CRM_SYNC_CONFIG", &self.file)
            // Lists by environment, as an operator would give them.
            .env("CRM_SYNC_TWO_WAY__STAGES", p.stages.join(","))
            .env("CRM_SYNC_HTTP__LISTEN", format!("127.0.0.1:{}", p.metrics_port))
            .env("RUST_LOG", "info")
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()?;
        p.child = Some(child);
        let ready = format!("http://127.0.0.1:{}/health/ready", p.metrics_port);
        let http = self.http.clone();
        eventually(WAIT, "crm-sync ready", || {
            let (http, ready) = (http.clone(), ready.clone());
            async move {
                Ok(http
                    .get(&ready)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK))
            }
        })
        .await?;
        // Only the stages it runs show in its metrics.
        let metrics = self
            .http
            .get(format!("http://127.0.0.1:{}/metrics", p.metrics_port))
            .send()
            .await?
            .text()
            .await?;
        for s in ALL {
            let series = format!("crm_sync_two_way_stage_up{{stage=\"{s}\"}}");
            assert_eq!(
                metrics.contains(&series),
                p.stages.contains(&s),
                "{}: stage {s} in the metrics of a process running {:?}",
                self.name,
                p.stages
            );
        }
        assert_eq!(
            metrics.contains("crm_sync_outbox_depth"),
            p.stages.contains(&"relay"),
            "only the relay's process reports the outbox: {:?} {}",
            p.stages,
            metrics
                .lines()
                .filter(|l| l.contains("outbox") || l.contains("stage_up"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        Ok(())
    }

    /// Waits until the lone stage's process counts something in `metric` (summed over labels).
    async fn first_progress(&self, metric: &str, within: Duration) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/metrics", self.alone.metrics_port);
        let what = format!("{}: the restarted stage counts {metric}", self.name);
        eventually(within, &what, || {
            let (http, url) = (self.http.clone(), url.clone());
            async move {
                let Ok(r) = http.get(&url).send().await else {
                    return Ok(false);
                };
                let text = r.text().await.unwrap_or_default();
                let total: f64 = text
                    .lines()
                    .filter(|l| l.starts_with(metric))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                Ok(total > 0.0)
            }
        })
        .await
    }

    fn kill_alone(&mut self) -> anyhow::Result<()> {
        let mut child = self.alone.child.take().expect("running");
        let killed = child.kill(); // SIGKILL
        child.wait()?;
        Ok(killed?)
    }

    fn kill_all(&mut self) {
        for p in [&mut self.alone, &mut self.rest] {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    async fn theirs(&self, client: &str) -> anyhow::Result<Option<Value>> {
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

    async fn sim_list(&self, what: &str) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .http
            .get(format!("{}/sim/{}/{what}", self.sim_url, self.dialect.name()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn ours(&self, client: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}/v1/clients/{client}", self.api))
            .bearer_auth(API_TOKEN)
            .send()
            .await?;
        anyhow::ensure!(r.status() == StatusCode::OK, "GET {client}: {}", r.status());
        Ok(r.json().await?)
    }
}

impl Drop for Crash {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// One API request and every answer it got, for the idempotency checks.
#[derive(Clone)]
struct Sent {
    key: String,
    answers: Vec<(StatusCode, Value)>,
}

/// Sends the request, and the same request with the same `Idempotency-Key` again after a
/// connection failure, a 5xx or `409 idempotency-in-flight`, until it is answered.
async fn send_until_answered(
    http: &reqwest::Client,
    api: &str,
    method: Method,
    path: &str,
    body: Value,
    log: &Mutex<Vec<Sent>>,
) -> anyhow::Result<Value> {
    let key = uuid::Uuid::new_v4().to_string();
    let mut sent = Sent {
        key: key.clone(),
        answers: Vec::new(),
    };
    let start = Instant::now();
    loop {
        anyhow::ensure!(start.elapsed() < WAIT, "{method} {path}: never answered");
        let r = http
            .request(method.clone(), format!("{api}{path}"))
            .bearer_auth(API_TOKEN)
            .header("idempotency-key", &key)
            .json(&body)
            .send()
            .await;
        let Ok(r) = r else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let status = r.status();
        let answer = r.json::<Value>().await.unwrap_or(Value::Null);
        let in_flight = status == StatusCode::CONFLICT && answer["code"] == "idempotency-in-flight";
        if status.is_server_error() || in_flight {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        anyhow::ensure!(status.is_success(), "{method} {path}: {status} {answer}");
        sent.answers.push((status, answer.clone()));
        // Asked once more with the same key: the first answer again, no second effect.
        let again = http
            .request(method.clone(), format!("{api}{path}"))
            .bearer_auth(API_TOKEN)
            .header("idempotency-key", &key)
            .json(&body)
            .send()
            .await;
        if let Ok(again) = again {
            let status = again.status();
            sent.answers
                .push((status, again.json::<Value>().await.unwrap_or(Value::Null)));
        }
        log.lock().expect("log").push(sent);
        return Ok(answer);
    }
}

/// What one client's stream of API calls sets, and the card changes it makes.
struct Plan {
    card_changes: usize,
}

fn manager_of(i: usize) -> String {
    format!("{}", 100 + i)
}

/// The requests for client `i`, in order: the card, a task, an interaction, card patches, the
/// task done, a second interaction.
async fn drive_client(
    http: reqwest::Client,
    api: String,
    i: usize,
    progress: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Sent>>>,
) -> anyhow::Result<Plan> {
    let c = format!("c-{i}");
    let step = |m: Method, path: String, body: Value| {
        let (http, api, log, progress) = (http.clone(), api.clone(), log.clone(), progress.clone());
        async move {
            let answer = send_until_answered(&http, &api, m, &path, body, &log).await?;
            progress.fetch_add(1, Ordering::SeqCst);
            anyhow::Ok(answer)
        }
    };
    let card = json!({"fields": {"first_name": format!("F{i}-0"), "last_name": "Lovelace",
        "phone": format!("+7999123450{i}"), "email": format!("c{i}@example.com"), "segment": "regular",
        "consent_sms": true, "consent_email": false}});
    let mut versions = vec![step(Method::PUT, format!("/v1/clients/{c}"), card).await?["version"].as_i64()];
    step(
        Method::PUT,
        format!("/v1/clients/{c}/tasks/t-{i}"),
        json!({"title": format!("Call back {i}"), "state": "open", "due_at": "2026-12-20T10:00:00Z"}),
    )
    .await?;
    step(
        Method::PUT,
        format!("/v1/clients/{c}/interactions/n-{i}-1"),
        json!({"channel": "call", "direction": "inbound", "text": format!("first call of {i}"),
            "at": "2026-12-01T10:00:00Z"}),
    )
    .await?;
    let patches = 4;
    for n in 1..=patches {
        let fields = if n % 2 == 1 {
            json!({"first_name": format!("F{i}-{n}")})
        } else {
            json!({"last_name": format!("L{i}-{n}"), "email": format!("c{i}-{n}@example.com")})
        };
        let a = step(
            Method::PATCH,
            format!("/v1/clients/{c}"),
            json!({ "fields": fields }),
        )
        .await?;
        versions.push(a["version"].as_i64());
    }
    step(
        Method::PUT,
        format!("/v1/clients/{c}/tasks/t-{i}"),
        json!({"title": format!("Call back {i}"), "state": "done", "due_at": "2026-12-20T10:00:00Z"}),
    )
    .await?;
    step(
        Method::PUT,
        format!("/v1/clients/{c}/interactions/n-{i}-2"),
        json!({"channel": "email", "direction": "outbound", "text": format!("follow-up to {i}"),
            "at": "2026-12-01T11:00:00Z"}),
    )
    .await?;
    anyhow::ensure!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "c-{i}: every card change one version more: {versions:?}"
    );
    Ok(Plan {
        card_changes: 1 + patches,
    })
}

const STEPS_PER_CLIENT: usize = 9;

/// A CRM user sets the manager of every even client once its contact is there.
async fn crm_edits(
    http: reqwest::Client,
    sim_url: String,
    d: Dialect,
    progress: Arc<AtomicUsize>,
) -> anyhow::Result<BTreeMap<usize, String>> {
    // Mid-flow: after a third of the API calls.
    while progress.load(Ordering::SeqCst) < CLIENTS * STEPS_PER_CLIENT / 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut edited = BTreeMap::new();
    for i in (0..CLIENTS).step_by(2) {
        let start = Instant::now();
        let crm_id = loop {
            let r = http
                .get(format!("{sim_url}/sim/{}/contacts", d.name()))
                .query(&[("external_id", format!("c-{i}"))])
                .send()
                .await?;
            if r.status().is_success() {
                let c: Value = r.json().await?;
                break c["crm_id"].as_str().unwrap_or_default().to_owned();
            }
            anyhow::ensure!(start.elapsed() < WAIT, "c-{i} never reached the CRM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        http.patch(format!("{sim_url}/sim/{}/contacts/{crm_id}", d.name()))
            .json(&json!({"manager": manager_of(i)}))
            .send()
            .await?
            .error_for_status()?;
        edited.insert(i, crm_id);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    Ok(edited)
}

/// Clients known from `All_Clients` only.
const REFERENCE_CLIENTS: usize = 6;
/// Records per reference client (each one changes the first name).
const REFERENCE_RECORDS: usize = 3;

fn reference(j: usize, r: usize) -> String {
    json!({"version": 1, "event_id": format!("ev-a{j}-{r}"), "client_id": format!("a-{j}"),
        "occurred_at": format!("2026-12-02T10:0{r}:00Z"),
        "fields": {"first_name": format!("A{j}-{r}"), "last_name": "Byron", "phone": format!("+7999765430{j}"),
            "segment": "regular", "consent_sms": false, "consent_email": true}})
    .to_string()
}

/// Our systems publish the reference clients' cards on `All_Clients`, spread over the stream,
/// one record twice (a redelivery).
async fn all_clients(topic: String, progress: Arc<AtomicUsize>) -> anyhow::Result<()> {
    let producer = producer()?;
    let total = CLIENTS * STEPS_PER_CLIENT;
    for r in 0..REFERENCE_RECORDS {
        while progress.load(Ordering::SeqCst) < total * r * 3 / 10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for j in 0..REFERENCE_CLIENTS {
            send(&producer, &topic, &format!("a-{j}"), &reference(j, r)).await?;
        }
    }
    for j in 0..REFERENCE_CLIENTS {
        send(&producer, &topic, &format!("a-{j}"), &reference(j, 1)).await?;
    }
    Ok(())
}

/// Every record on `topic` now.
fn read_topic(topic: &str) -> anyhow::Result<Vec<Value>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    c.subscribe(&[topic])?;
    let mut out = Vec::new();
    let mut idle = Instant::now();
    let start = Instant::now();
    while idle.elapsed() < Duration::from_secs(2) && start.elapsed() < Duration::from_secs(20) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            idle = Instant::now();
            if let Some(v) = m.payload().and_then(|p| serde_json::from_slice(p).ok()) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// A card field as the merge sees it: a consent nobody gave is no consent.
fn field(card: &Value, f: &str) -> Value {
    match (&card[f], f.starts_with("consent_")) {
        (Value::Null, true) => Value::Bool(false),
        (v, _) => v.clone(),
    }
}

/// The card fields compared between the two sides.
const FIELDS: [&str; 8] = [
    "first_name",
    "last_name",
    "phone",
    "email",
    "manager",
    "segment",
    "consent_sms",
    "consent_email",
];

async fn kill_mid_flow(stage: &'static str, d: Dialect) -> anyhow::Result<()> {
    let mut crash = Crash::start(stage, d).await?;
    let pool = crash.scope.wait_for_schema().await?;
    let progress = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let drivers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(drive_client(
                crash.http.clone(),
                crash.api.clone(),
                i,
                progress.clone(),
                log.clone(),
            ))
        })
        .collect();

    let edits = tokio::spawn(crm_edits(
        crash.http.clone(),
        crash.sim_url.clone(),
        d,
        progress.clone(),
    ));
    let references = tokio::spawn(all_clients(
        format!("All_Clients.{}", crash.scope.id),
        progress.clone(),
    ));

    // The kill lands in the middle of the stream.
    let total = CLIENTS * STEPS_PER_CLIENT;
    while progress.load(Ordering::SeqCst) < total / 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy_at_kill = count(
        &pool,
        "SELECT (SELECT count(*) FROM crm_outbox) + (SELECT count(*) FROM crm_webhook WHERE processed_at IS NULL)",
    )
    .await?;
    let done_at_kill = progress.load(Ordering::SeqCst);
    crash.kill_alone()?;
    // Work piles up for the dead stage a moment before it is back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    crash.spawn(true).await?;
    if stage == "dispatcher" {
        // A restarted consumer gets its partitions only once the group has rebalanced, which
        // waits out the killed member's session and can take long on a loaded machine: the
        // convergence wait below starts once the new member has dispatched its first change.
        crash
            .first_progress("crm_sync_two_way_dispatched_total", 3 * WAIT)
            .await?;
    }
    let mut plans = Vec::new();
    for d in drivers {
        plans.push(d.await??);
    }
    let edited = edits.await??;
    references.await??;
    assert!(
        done_at_kill < total,
        "{}: the kill must land mid-stream ({done_at_kill} of {total} calls done)",
        crash.name
    );
    if stage == "api" {
        // The generic CRM tries each webhook once: a delivery that met the dead API is sent
        // again, as a vendor that retries (or `crm-sync reconcile`) would.
        for crm_id in edited.values() {
            crash
                .http
                .post(format!(
                    "{}/sim/{}/contacts/{crm_id}/notify?times=1",
                    crash.sim_url,
                    d.name()
                ))
                .send()
                .await?
                .error_for_status()?;
        }
    }

    // Everything reaches the other side: our copy equals the CRM's, and holds what each side
    // last set.
    let expected = |i: usize| -> BTreeMap<&'static str, Value> {
        let mut m = BTreeMap::new();
        m.insert("first_name", json!(format!("F{i}-3")));
        m.insert("last_name", json!(format!("L{i}-4")));
        m.insert("email", json!(format!("c{i}-4@example.com")));
        m.insert("phone", json!(format!("+7999123450{i}")));
        m.insert("segment", json!("regular"));
        if i % 2 == 0 {
            m.insert("manager", json!(manager_of(i)));
        }
        m
    };
    let reference_expected = |j: usize| -> BTreeMap<&'static str, Value> {
        let mut m = BTreeMap::new();
        m.insert("first_name", json!(format!("A{j}-{}", REFERENCE_RECORDS - 1)));
        m.insert("last_name", json!("Byron"));
        m.insert("consent_email", json!(true));
        m
    };
    let everyone: Vec<(String, BTreeMap<&'static str, Value>)> = (0..CLIENTS)
        .map(|i| (format!("c-{i}"), expected(i)))
        .chain((0..REFERENCE_CLIENTS).map(|j| (format!("a-{j}"), reference_expected(j))))
        .collect();
    let mut last = String::new();
    let start = Instant::now();
    let converged = loop {
        let mut all = true;
        for (c, want) in &everyone {
            let Ok(ours) = crash.ours(c).await else {
                last = format!("{c} is not in our copy");
                all = false;
                break;
            };
            let theirs = crash.theirs(c).await?.unwrap_or(Value::Null);
            let differ: Vec<&str> = FIELDS
                .into_iter()
                .filter(|f| {
                    let (o, t) = (field(&ours["fields"], f), field(&theirs, f));
                    o != t || want.get(f).is_some_and(|w| o != *w)
                })
                .collect();
            if !differ.is_empty() {
                last = format!(
                    "{c} differs in {differ:?}: ours {} theirs {theirs}",
                    ours["fields"]
                );
                all = false;
                break;
            }
        }
        if all {
            break true;
        }
        if start.elapsed() > WAIT {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(converged, "{}: the two sides never converged: {last}", crash.name);

    // Settled: nothing waits in the outbox, every stored webhook was handled.
    eventually(WAIT, "the outbox drained and every webhook handled", || {
        let pool = pool.clone();
        async move {
            Ok(count(
                &pool,
                "SELECT (SELECT count(*) FROM crm_outbox) + (SELECT count(*) FROM crm_webhook WHERE processed_at IS NULL)",
            )
            .await?
                == 0)
        }
    })
    .await?;

    // The dispatcher may still be on the last records the relay published: wait until every
    // task's last state and every interaction reached the CRM.
    let settled = eventually(WAIT, "every task done and every interaction in the CRM", || {
        let crash = &crash;
        async move {
            let tasks = crash.sim_list("tasks").await?;
            let notes = crash.sim_list("notes").await?;
            Ok(tasks.len() >= CLIENTS
                && tasks.iter().all(|t| t["state"] == "done")
                && notes.len() >= 2 * CLIENTS)
        }
    })
    .await;
    if let Err(e) = settled {
        let open: Vec<Value> = crash
            .sim_list("tasks")
            .await?
            .into_iter()
            .filter(|t| t["state"] != "done")
            .collect();
        let notes: Vec<Value> = crash
            .sim_list("notes")
            .await?
            .into_iter()
            .map(|n| n["external_id"].clone())
            .collect();
        let waiting = count(&pool, "SELECT count(*) FROM crm_outbox").await?;
        anyhow::bail!(
            "{}: {e}; tasks not done: {open:?}; notes in the CRM: {notes:?}; outbox rows: {waiting}",
            crash.name
        );
    }

    // Nothing doubled in the CRM: one contact per client, each task and interaction once.
    let contacts = crash.sim_list("contacts").await?;
    let mut per_client: BTreeMap<String, usize> = BTreeMap::new();
    for c in &contacts {
        *per_client
            .entry(c["external_id"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let want: BTreeMap<String, usize> = everyone.iter().map(|(c, _)| (c.clone(), 1)).collect();
    assert_eq!(per_client, want, "{}: one contact per client", crash.name);
    let tasks = crash.sim_list("tasks").await?;
    let mut task_ids: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tasks {
        *task_ids
            .entry(t["external_id"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        assert_eq!(t["state"], "done", "{}: the task's last state: {t}", crash.name);
    }
    let want: BTreeMap<String, usize> = (0..CLIENTS).map(|i| (format!("t-{i}"), 1)).collect();
    assert_eq!(task_ids, want, "{}: each task once in the CRM", crash.name);
    let notes = crash.sim_list("notes").await?;
    let mut note_ids: BTreeMap<String, usize> = BTreeMap::new();
    for n in &notes {
        *note_ids
            .entry(n["external_id"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let want: BTreeMap<String, usize> = (0..CLIENTS)
        .flat_map(|i| [format!("n-{i}-1"), format!("n-{i}-2")])
        .map(|n| (n, 1))
        .collect();
    assert_eq!(note_ids, want, "{}: each interaction once in the CRM", crash.name);

    // Nothing doubled on our side: one version per card change (a CRM edit adds one), no
    // operator task (the two sides edited different fields), every request answered once.
    for (i, plan) in plans.iter().enumerate() {
        let ours = crash.ours(&format!("c-{i}")).await?;
        let edits = usize::from(i % 2 == 0);
        assert_eq!(
            ours["version"].as_u64(),
            Some((plan.card_changes + edits) as u64),
            "{}: c-{i} has one version per change: {ours}",
            crash.name
        );
    }
    for j in 0..REFERENCE_CLIENTS {
        let ours = crash.ours(&format!("a-{j}")).await?;
        assert_eq!(
            ours["version"].as_u64(),
            Some(REFERENCE_RECORDS as u64),
            "{}: a-{j} has one version per All_Clients record, none for the redelivery: {ours}",
            crash.name
        );
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM operator_task").await?,
        0,
        "{}: no operator task",
        crash.name
    );
    let sent = log.lock().expect("log").clone();
    for s in &sent {
        let first = &s.answers[0];
        for again in &s.answers[1..] {
            assert_eq!(again, first, "{}: key {} answered differently", crash.name, s.key);
        }
    }
    assert_eq!(
        // `All_Clients` records claim their `event_id` there too.
        count(
            &pool,
            "SELECT count(*) FROM api_idempotency WHERE scope <> 'All_Clients'"
        )
        .await?,
        sent.len() as i64,
        "{}: one stored answer per request",
        crash.name
    );

    // One outcome per stored webhook (records are at least once: de-duplicated by webhook_id).
    let stored: BTreeSet<i64> = sqlx::query_scalar("SELECT id FROM crm_webhook")
        .fetch_all(&pool)
        .await?
        .into_iter()
        .collect();
    let processed = read_topic(&format!("crm.processed.{}", crash.scope.id))?;
    let failed = read_topic(&format!("crm.failed.{}", crash.scope.id))?;
    let outcomes: Vec<i64> = processed
        .iter()
        .filter_map(|p| p["webhook_id"].as_i64())
        .collect();
    let distinct: BTreeSet<i64> = outcomes.iter().copied().collect();
    assert!(failed.is_empty(), "{}: no webhook failed: {failed:?}", crash.name);
    assert_eq!(
        distinct, stored,
        "{}: every stored webhook has an outcome",
        crash.name
    );
    eprintln!(
        "{}: killed after {done_at_kill} of {total} calls with {busy_at_kill} rows in flight; {} webhooks, {} outcome records",
        crash.name,
        stored.len(),
        outcomes.len()
    );
    crash.kill_all();
    crash.scope.drop_database().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_way_crash_kill_9_of_the_api_mid_burst_generic() -> anyhow::Result<()> {
    kill_mid_flow("api", Dialect::Generic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_way_crash_kill_9_of_the_relay_generic() -> anyhow::Result<()> {
    kill_mid_flow("relay", Dialect::Generic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_way_crash_kill_9_of_the_dispatcher_generic() -> anyhow::Result<()> {
    kill_mid_flow("dispatcher", Dialect::Generic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_way_crash_kill_9_of_the_processor_generic() -> anyhow::Result<()> {
    kill_mid_flow("processor", Dialect::Generic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_way_crash_kill_9_of_the_clients_consumer_generic() -> anyhow::Result<()> {
    kill_mid_flow("clients", Dialect::Generic).await
}
