//! Scale-out and failover of crm-sync (seed 003: recover within a second, nothing lost), on the
//! local broker and on librdkafka's mock cluster (in this process, over TCP) side by side:
//! - 1, 2 and 3 instances in one group on the same partitions drain the same backlog: events/s,
//!   CPU per 1,000 events, and how the outcomes spread over the members;
//! - three members under a steady stream, one killed with SIGKILL and started again at once:
//!   how long the partitions stall (the longest gap between CRM writes of a partition after the
//!   kill), the time from the restart to the restarted member's first committed outcome, and
//!   that no event is lost. Five times: dynamic membership with the default and a short session
//!   timeout, static membership (`group.instance.id`) with a short one, that with
//!   cooperative-sticky assignment, and that with the shortest session crm-sync accepts (1 s).

use super::{create_topics, outcomes, spawn_crm_sim, Args, Mock, SECRET, TOKEN};
use crate::harness::{drop_database, free_port, run_id, sibling_bin};
use crate::procfs::cpu_seconds;
use crate::{event_json, paced, producer, send_all, STATUSES};
use serde_json::{json, Value};
use sqlx::Connection;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// How the members of a failover run join their group.
#[derive(Clone, Copy)]
struct Membership {
    name: &'static str,
    static_ids: bool,
    session_timeout_ms: u32,
    cooperative: bool,
}

const DYNAMIC: Membership = Membership {
    name: "dynamic membership, session 10 s, eager assignment",
    static_ids: false,
    session_timeout_ms: 10_000,
    cooperative: false,
};

const DYNAMIC_SHORT: Membership = Membership {
    name: "dynamic membership, session 3 s, eager assignment",
    static_ids: false,
    session_timeout_ms: 3_000,
    cooperative: false,
};

const STATIC: Membership = Membership {
    name: "static membership, session 3 s, eager assignment",
    static_ids: true,
    session_timeout_ms: 3_000,
    cooperative: false,
};

const STATIC_COOPERATIVE: Membership = Membership {
    name: "static membership, session 3 s, cooperative-sticky",
    static_ids: true,
    session_timeout_ms: 3_000,
    cooperative: true,
};

/// The shortest session crm-sync accepts: the mock cluster's coordinator waits for members
/// about a session timeout, so this is the fastest handover it allows.
const STATIC_COOPERATIVE_SHORTEST: Membership = Membership {
    name: "static membership, session 1 s, cooperative-sticky",
    static_ids: true,
    session_timeout_ms: 1_000,
    cooperative: true,
};

/// One crm-sync instance of a run.
struct Member {
    child: Child,
    port: u16,
}

impl Member {
    fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// What every member of one run shares.
struct Group<'a> {
    brokers: &'a str,
    id: String,
    topic: String,
    db_url: String,
    sim_port: u16,
    membership: Membership,
}

impl Group<'_> {
    fn spawn(&self, n: usize) -> anyhow::Result<Member> {
        let port = free_port()?;
        let m = self.membership;
        let mut env = vec![
            ("CRM_SYNC_KAFKA__BROKERS", self.brokers.to_owned()),
            ("CRM_SYNC_KAFKA__GROUP_ID", format!("bench-{}", self.id)),
            ("CRM_SYNC_KAFKA__INPUT_TOPIC", self.topic.clone()),
            (
                "CRM_SYNC_KAFKA__OUTCOME_TOPIC",
                format!("{}.outcomes", self.topic),
            ),
            ("CRM_SYNC_KAFKA__DEAD_LETTER_TOPIC", format!("{}.dlq", self.topic)),
            (
                "CRM_SYNC_KAFKA__SESSION_TIMEOUT_MS",
                m.session_timeout_ms.to_string(),
            ),
            (
                "CRM_SYNC_KAFKA__REJOIN_AFTER_MS",
                (u64::from(m.session_timeout_ms) + 5_000).to_string(),
            ),
            ("CRM_SYNC_POSTGRES__URL", self.db_url.clone()),
            (
                "CRM_SYNC_CRM__GENERIC__BASE_URL",
                format!("http://127.0.0.1:{}", self.sim_port),
            ),
            ("CRM_SYNC_CRM__GENERIC__TOKEN", TOKEN.into()),
            ("CRM_SYNC_CRM__GENERIC__SIGNING_SECRET", SECRET.into()),
            ("CRM_SYNC_HTTP__LISTEN", format!("127.0.0.1:{port}")),
            ("RUST_LOG", "warn".into()),
        ];
        if m.static_ids {
            env.push(("CRM_SYNC_KAFKA__GROUP_INSTANCE_ID", format!("member-{n}")));
        }
        if m.cooperative {
            env.push((
                "CRM_SYNC_KAFKA__PROPERTIES",
                r#"{"partition.assignment.strategy"="cooperative-sticky"}"#.into(),
            ));
        }
        let child = Command::new(sibling_bin("crm-sync", "crm-sync")?)
            .envs(env)
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Member { child, port })
    }
}

async fn produce_backlog(brokers: &str, topic: &str, events: usize, prefix: &str) -> anyhow::Result<()> {
    let p = producer(brokers, 20)?;
    let at = OffsetDateTime::now_utc().format(&Rfc3339)?;
    let records = (0..events).map(|i| {
        let shipment = format!("{prefix}-ship-{i}");
        let doc = event_json(&format!("{prefix}-ev-{i}"), &shipment, STATUSES[i % 4], &at);
        (shipment, doc)
    });
    send_all(&p, topic, records, 50_000).await
}

/// Outcomes so far of each member that answers (a killed one counts nothing).
async fn member_outcomes(client: &reqwest::Client, members: &[Member]) -> Vec<f64> {
    let mut out = Vec::with_capacity(members.len());
    for m in members {
        out.push(outcomes(client, m.port, "").await.unwrap_or(0.0));
    }
    out
}

/// Events with a final outcome in the database.
async fn processed(db: &mut sqlx::PgConnection) -> f64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM processed_events")
        .fetch_one(db)
        .await
        .unwrap_or(0) as f64
}

/// Connects once crm-sync has created and migrated its database.
async fn connect_when_ready(url: &str, limit: Duration) -> anyhow::Result<sqlx::PgConnection> {
    let start = Instant::now();
    loop {
        if let Ok(mut c) = sqlx::PgConnection::connect(url).await {
            if sqlx::query("SELECT 1 FROM processed_events LIMIT 1")
                .execute(&mut c)
                .await
                .is_ok()
            {
                return Ok(c);
            }
        }
        anyhow::ensure!(
            start.elapsed() < limit,
            "crm-sync's database not ready in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_processed(
    db: &mut sqlx::PgConnection,
    target: f64,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let start = Instant::now();
    loop {
        if processed(db).await >= target {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            start.elapsed() < limit,
            "{target} events not processed in {limit:?} ({} were)",
            processed(db).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` members draining one backlog.
async fn scale_run(
    args: &Args,
    brokers: &str,
    mock: Option<&Mock>,
    sim_port: u16,
    n: usize,
) -> anyhow::Result<Value> {
    let id = run_id();
    let group = Group {
        brokers,
        id: id.clone(),
        topic: format!("bench.scale.{id}"),
        db_url: format!("{}/bench_scale_{id}", args.pg),
        sim_port,
        membership: DYNAMIC,
    };
    create_topics(
        brokers,
        mock,
        &[
            &group.topic,
            &format!("{}.outcomes", group.topic),
            &format!("{}.dlq", group.topic),
        ],
        args.partitions,
    )
    .await?;
    let mut members = Vec::new();
    for i in 0..n {
        members.push(group.spawn(i)?);
    }
    let result = async {
        let mut db = connect_when_ready(&group.db_url, Duration::from_secs(60)).await?;
        let client = reqwest::Client::new();
        // The group settles first, so the backlog is spread over every member: a few events,
        // until each member has written one (or a minute has passed).
        let warmup = 60 * n;
        produce_backlog(brokers, &group.topic, warmup, &format!("{id}-warmup")).await?;
        let settle = Instant::now();
        while member_outcomes(&client, &members).await.contains(&0.0)
            && settle.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_processed(&mut db, warmup as f64, Duration::from_secs(60)).await?;
        produce_backlog(brokers, &group.topic, args.scale_events, &id).await?;
        let target = args.scale_events as f64;
        // The window opens at the first outcome, once every member is up.
        let started = Instant::now();
        loop {
            if processed(&mut db).await >= warmup as f64 + 1.0 {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "no outcome in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t0 = Instant::now();
        let n0 = processed(&mut db).await;
        let cpu0: f64 = members.iter().filter_map(|m| cpu_seconds(m.child.id())).sum();
        let t1 = wait_processed(&mut db, target + warmup as f64, Duration::from_secs(600)).await?;
        let cpu1: f64 = members.iter().filter_map(|m| cpu_seconds(m.child.id())).sum();
        let spread = member_outcomes(&client, &members).await;
        let events = target + warmup as f64 - n0;
        anyhow::Ok(json!({
            "instances": n,
            "events": args.scale_events,
            "events_per_s": (events / (t1 - t0).as_secs_f64()).round(),
            "cpu_seconds_per_1000_events": ((cpu1 - cpu0) / (events / 1000.0) * 1000.0).round() / 1000.0,
            "outcomes_per_member": spread,
        }))
    }
    .await;
    for m in &mut members {
        m.stop();
    }
    drop_database(&args.pg, &format!("bench_scale_{id}")).await;
    result
}

/// Three members under a steady stream; member 0 killed, then started again at once.
async fn failover_run(
    args: &Args,
    brokers: &str,
    mock: Option<&Mock>,
    sim_port: u16,
    membership: Membership,
) -> anyhow::Result<Value> {
    let id = run_id();
    let group = Group {
        brokers,
        id: id.clone(),
        topic: format!("bench.failover.{id}"),
        db_url: format!("{}/bench_failover_{id}", args.pg),
        sim_port,
        membership,
    };
    create_topics(
        brokers,
        mock,
        &[
            &group.topic,
            &format!("{}.outcomes", group.topic),
            &format!("{}.dlq", group.topic),
        ],
        args.partitions,
    )
    .await?;
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(group.spawn(i)?);
    }
    let result = async {
        let mut db = connect_when_ready(&group.db_url, Duration::from_secs(60)).await?;
        let client = reqwest::Client::new();
        let rate = args.failover_rate;
        let total = (rate * args.failover_seconds) as usize;
        let (b, t, prefix) = (brokers.to_owned(), group.topic.clone(), id.clone());
        let stream = tokio::spawn(async move {
            paced(&b, &t, rate, total, |i| {
                let shipment = format!("{prefix}-ship-{i}");
                let at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
                (shipment.clone(), event_json(&format!("{prefix}-ev-{i}"), &shipment, "IN_TRANSIT", &at))
            })
            .await
        });
        // Every member consuming (each has written an outcome), then a few seconds of traffic.
        let settle = Instant::now();
        while member_outcomes(&client, &members).await.contains(&0.0) {
            if settle.elapsed() > Duration::from_secs(60) {
                println!("  not every member got partitions within 60 s; killing anyway");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let killed_at = OffsetDateTime::now_utc();
        members[0].kill();
        let restarted = Instant::now();
        members[0] = group.spawn(0)?;
        // Where the restart's time goes: the process serving HTTP (configuration, database,
        // migrations), ready (its pipeline running), its first outcome (joined, assigned,
        // fetched, written, committed).
        let (mut live_ms, mut ready_ms, mut first_commit_ms) = (None, None, None);
        let port = members[0].port;
        let answers = |path: &'static str| {
            let client = client.clone();
            async move {
                client
                    .get(format!("http://127.0.0.1:{port}{path}"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        };
        while restarted.elapsed() < Duration::from_secs(60) {
            let at = || Some(restarted.elapsed().as_secs_f64() * 1000.0);
            if live_ms.is_none() && answers("/health/live").await {
                live_ms = at();
            }
            if live_ms.is_some() && ready_ms.is_none() && answers("/health/ready").await {
                ready_ms = at();
            }
            if outcomes(&client, port, "").await.unwrap_or(0.0) > 0.0 {
                first_commit_ms = at();
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stream.await??;
        let done = wait_processed(&mut db, total as f64, Duration::from_secs(60)).await;
        let processed_now = processed(&mut db).await;
        // Per partition, the longest pause between CRM writes from a second before the kill on.
        let stalls: Vec<(i32, f64)> = sqlx::query_as(
            "SELECT source_partition, coalesce(max(gap), 0)::float8 FROM (
                SELECT source_partition,
                       extract(epoch FROM sent_at - lag(sent_at) OVER (PARTITION BY source_partition ORDER BY sent_at)) * 1000 AS gap
                  FROM integrations_log WHERE sent_at >= $1 - interval '1 second') g
              GROUP BY source_partition ORDER BY source_partition",
        )
        .bind(killed_at)
        .fetch_all(&mut db)
        .await?;
        let doubled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT event_id FROM integrations_log WHERE outcome = 'success'
                GROUP BY event_id HAVING count(*) > 1) d",
        )
        .fetch_one(&mut db)
        .await?;
        let max_stall = stalls.iter().map(|(_, g)| *g).fold(0.0, f64::max);
        anyhow::Ok(json!({
            "membership": membership.name,
            "rate_events_per_s": rate,
            "events": total,
            "partitions_stalled_ms_max": max_stall.round(),
            "stall_ms_per_partition": stalls.iter().map(|(p, g)| json!({"partition": p, "ms": g.round()})).collect::<Vec<_>>(),
            "restart_to_http_ms": live_ms.map(f64::round),
            "restart_to_ready_ms": ready_ms.map(f64::round),
            "restart_to_first_commit_ms": first_commit_ms.map(f64::round),
            "unprocessed_events": total as f64 - processed_now,
            "all_processed": done.is_ok(),
            "events_written_twice": doubled,
        }))
    }
    .await;
    for m in &mut members {
        m.stop();
    }
    drop_database(&args.pg, &format!("bench_failover_{id}")).await;
    result
}

async fn on_broker(args: &Args, brokers: &str, mock: Option<&Mock>, name: &str) -> anyhow::Result<Value> {
    let sim_port = free_port()?;
    let mut sim = spawn_crm_sim(sim_port, None)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let result = async {
        let mut scale = Vec::new();
        for n in 1..=3 {
            println!(
                "scale-out ({name}): {n} instance(s) draining {} events",
                args.scale_events
            );
            let run = scale_run(args, brokers, mock, sim_port, n).await?;
            println!("  {run}");
            scale.push(run);
        }
        let base = scale[0]["events_per_s"].as_f64().unwrap_or(0.0);
        for run in &mut scale {
            let rate = run["events_per_s"].as_f64().unwrap_or(0.0);
            run["ratio_to_one_instance"] = json!((rate / base.max(1.0) * 1000.0).round() / 1000.0);
        }
        let mut failover = Vec::new();
        for membership in [
            DYNAMIC,
            DYNAMIC_SHORT,
            STATIC,
            STATIC_COOPERATIVE,
            STATIC_COOPERATIVE_SHORTEST,
        ] {
            println!("failover ({name}): {}", membership.name);
            let run = match failover_run(args, brokers, mock, sim_port, membership).await {
                Ok(run) => run,
                Err(e) => json!({"membership": membership.name, "error": e.to_string()}),
            };
            println!("  {run}");
            failover.push(run);
        }
        anyhow::Ok(json!({"broker": name, "scale_out": scale, "failover": failover}))
    }
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &sim.id().to_string()])
        .status();
    let _ = sim.wait();
    result
}

pub(super) async fn measure(args: &Args) -> anyhow::Result<Value> {
    let mut out = json!({});
    if args.scale_on.iter().any(|b| b == "local") {
        out["local_broker"] = on_broker(args, &args.brokers, None, "local broker").await?;
    }
    if args.scale_on.iter().any(|b| b == "mock") {
        let cluster: Mock = rdkafka::mocking::MockCluster::new(1)?;
        let brokers = cluster.bootstrap_servers();
        out["mock_cluster"] = on_broker(args, &brokers, Some(&cluster), "librdkafka mock cluster").await?;
    }
    Ok(out)
}
