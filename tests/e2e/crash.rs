use backbone_tests::*;
use crm_sim::Faults;
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `crm-sync` binary `make test` built beside this test binary.
pub(crate) fn crm_sync_binary() -> std::path::PathBuf {
    workspace_binary("crm-sync")
}

/// Starts crm-sync; its JSON log goes to `<tmp>/<scope>-<run>.log` for post-mortems.
fn spawn(scope: &Scope, crm_url: &str, port: u16, run: u32) -> std::io::Result<Child> {
    let log = std::fs::File::create(std::env::temp_dir().join(format!("{}-{run}.log", scope.id)))?;
    Command::new(crm_sync_binary())
        .envs(scope.env(crm_url, port))
        .env("RUST_LOG", "info")
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

const STATUSES: [&str; 4] = ["CREATED", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED"];

/// kill -9 in the middle of the stream, restart: nothing lost, nothing written twice. Then SIGTERM
/// drains and exits 0, and a restart after it finds nothing left to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_loses_nothing_and_doubles_nothing() -> anyhow::Result<()> {
    let scope = Scope::new("crash");
    scope.create_topics().await?;
    let (sim, crm_url) = start_sim().await?;
    // Slow the CRM a little so the kill lands while work is in flight.
    sim.set_faults(Faults {
        latency_ms: 3,
        ..Faults::default()
    });

    let producer = producer()?;
    let shipments = 400;
    let mut ids = HashSet::new();
    for s in 0..shipments {
        for (i, status) in STATUSES.iter().enumerate() {
            let id = format!("ev-{s}-{i}");
            let shipment = format!("ship-{s}");
            send(
                &producer,
                &scope.kafka.input_topic,
                &shipment,
                &event_json(&id, &shipment, status, &format!("2026-11-01T10:0{i}:00Z")),
            )
            .await?;
            ids.insert(id);
        }
    }

    let port = free_port();
    let mut first = spawn(&scope, &crm_url, port, 1)?;
    let pool = scope.wait_for_schema().await?;
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { anyhow::Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await?) }
    };
    eventually(
        Duration::from_secs(60),
        "some progress before the kill",
        || async { Ok(count("SELECT count(*) FROM processed_events").await? >= 200) },
    )
    .await?;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    assert!(metrics.contains("crm_sync_outcomes_total"), "metrics are served");
    assert_eq!(
        reqwest::get(format!("http://127.0.0.1:{port}/health/ready"))
            .await?
            .status(),
        200
    );
    first.kill()?; // SIGKILL
    first.wait()?;
    let before_restart = count("SELECT count(*) FROM processed_events").await?;
    assert!(
        before_restart < ids.len() as i64,
        "the kill must land mid-stream ({before_restart} done)"
    );

    // The replacement starts at once, while the killed member is still in the group. tansu
    // gives it an empty assignment and does not rebalance when the dead member expires
    // (ADR 0001); its watchdog sees the group's partitions go unconsumed and rejoins (before, it
    // stayed idle until restarted by hand).
    let mut second = spawn(&scope, &crm_url, port, 2)?;
    eventually(
        Duration::from_secs(120),
        "every event processed after the restart",
        || async { Ok(count("SELECT count(*) FROM processed_events").await? == ids.len() as i64) },
    )
    .await?;

    // SIGTERM: drain, commit, flush, exit 0.
    let status = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()?;
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || second.wait()).await??;
    assert!(exit.success(), "crm-sync exited with {exit:?} after SIGTERM");

    let stats = sim.stats();
    assert_eq!(stats.duplicate_writes, 0, "an event was written to the CRM twice");
    for s in 0..shipments {
        let record = sim
            .record(&format!("ship-{s}"))
            .expect("every shipment reached the CRM");
        assert_eq!(record["status"], "delivered");
    }
    let logged: i64 = count("SELECT count(DISTINCT event_id) FROM integrations_log").await?;
    assert_eq!(logged, ids.len() as i64, "every event has a log row");

    // Offsets were committed at shutdown: a third run logs only a sentinel sent after it
    // started, nothing that came before.
    let rows_before: i64 = count("SELECT count(*) FROM integrations_log").await?;
    let mut third = spawn(&scope, &crm_url, port, 3)?;
    let sentinel = event_json("sentinel", "ship-sentinel", "CREATED", "2026-11-01T11:00:00Z");
    send(&producer, &scope.kafka.input_topic, "ship-sentinel", &sentinel).await?;
    eventually(
        Duration::from_secs(60),
        "the sentinel processed by the third run",
        || async {
            Ok(count("SELECT count(*) FROM processed_events WHERE event_id = 'sentinel'").await? == 1)
        },
    )
    .await?;
    Command::new("kill")
        .args(["-TERM", &third.id().to_string()])
        .status()?;
    let exit = tokio::task::spawn_blocking(move || third.wait()).await??;
    assert!(exit.success());
    assert_eq!(
        count("SELECT count(*) FROM integrations_log").await?,
        rows_before + 1,
        "records committed before the restart came back"
    );
    scope.drop_database().await;
    Ok(())
}
