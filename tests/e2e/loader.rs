//! batch-loader against the real gift-certificates service: over HTTP and over Kafka, resumed
//! after kill -9 without issuing a code twice or missing one, duplicates across batches reported
//! and never overwritten, invalid rows in the reject file with their line numbers.

use backbone_certificates::{CodeKeys, GiftCode};
use backbone_tests::gift::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn batch_loader() -> PathBuf {
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/batch-loader
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("batch-loader");
    assert!(
        bin.exists(),
        "{} missing: build it first (`cargo build --bins`, done by `make test`)",
        bin.display()
    );
    bin
}

fn generate(dir: &Path, name: &str, count: u64) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new(batch_loader())
        .args([
            "generate",
            "--count",
            &count.to_string(),
            "--nominal",
            "500000",
            "--currency",
            "RUB",
            "--out",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    out
}

/// The codes of a batch file (header skipped).
fn codes(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next().map(str::to_owned))
        .collect()
}

fn load(service: &Service, file: &Path, batch: &str, via: &str) -> Command {
    let mut cmd = Command::new(batch_loader());
    cmd.arg("load")
        .arg(file)
        .args([
            "--batch-id",
            batch,
            "--via",
            via,
            "--job-size",
            "500",
            "--concurrency",
            "2",
        ])
        .args(["--progress", "plain", "--progress-every", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Over Kafka too: the loader opens the batch over the API before its first job.
    cmd.args(["--url", &service.base])
        .env("BATCH_LOADER_TOKEN", token(Channel::BatchLoader));
    if via == "kafka" {
        cmd.args([
            "--brokers",
            &backbone_tests::brokers(),
            "--topic",
            &service.topics.uploads,
        ]);
    }
    cmd
}

/// Runs the loader to its end off the runtime's threads: the service under test runs on them.
async fn run_to_end(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// `GET /certificates/upload/batches/{batch}`.
async fn batch_status(service: &Service, batch: &str) -> serde_json::Value {
    service
        .http
        .get(format!("{}/certificates/upload/batches/{batch}", service.base))
        .bearer_auth(token(Channel::BatchLoader))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn issued_in(service: &Service, batch: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM gift_certificate WHERE batch_id = $1")
        .bind(batch)
        .fetch_one(&service.pool)
        .await
        .unwrap()
}

/// How many of `codes` exist, by their keyed digest, and in which batches.
async fn present(service: &Service, codes: &[String]) -> Vec<(Option<String>, i64)> {
    let keys = backbone_kms::load_local(&backbone_kms::LocalKmsConfig::new(&service.key_file)).unwrap();
    let digests: Vec<Vec<u8>> = codes
        .iter()
        .map(|c| keys.code_digest(&GiftCode::parse(c).unwrap()).0.to_vec())
        .collect();
    sqlx::query_as(
        "SELECT batch_id, count(*) FROM gift_certificate WHERE code_digest = ANY($1) GROUP BY batch_id ORDER BY batch_id",
    )
    .bind(digests)
    .fetch_all(&service.pool)
    .await
    .unwrap()
}

/// Starts a load, kills it with SIGKILL once some (not all) of it is issued, then runs it again
/// to the end. Returns the second run's output.
async fn load_killed_then_resumed(
    service: &Service,
    file: &Path,
    batch: &str,
    via: &str,
    total: i64,
) -> String {
    let mut child = load(service, file, batch, via).spawn().unwrap();
    let started = Instant::now();
    loop {
        let issued = issued_in(service, batch).await;
        if issued > 0 {
            assert!(
                issued < total,
                "the whole batch went through before the kill; use a bigger file"
            );
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the loader ended before the kill"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "nothing was issued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let output = run_to_end(load(service, file, batch, via)).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the resumed load failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_load_killed_midway_resumes_without_issuing_twice() {
    let sms = sms_provider(200).await;
    let service = Service::start(&sms.uri(), |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let total = 20_000;
    let file = generate(dir.path(), "batch.csv", total as u64);
    let all = codes(&file);
    // Two bad rows at the end: a typo in a check character and a zero nominal.
    let mut typo = all[0].clone().into_bytes();
    typo[15] = if typo[15] == b'A' { b'B' } else { b'A' };
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!(
        "{},1234,500000,RUB,\n",
        String::from_utf8(typo).unwrap()
    ));
    text.push_str(&format!("{},1234,0,RUB,\n", new_code()));
    std::fs::write(&file, text).unwrap();

    let batch = format!("http-{}", service.id);
    let summary = load_killed_then_resumed(&service, &file, &batch, "http", total).await;
    assert_eq!(issued_in(&service, &batch).await, total, "{summary}");
    assert_eq!(
        present(&service, &all).await,
        [(Some(batch.clone()), total)],
        "none missing, none twice"
    );

    let rejects = std::fs::read_to_string(dir.path().join(format!("batch.csv.{batch}.rejects.csv"))).unwrap();
    let lines: Vec<&str> = rejects.lines().collect();
    assert_eq!(lines.len(), 3, "{rejects}");
    assert!(
        lines[1].starts_with(&format!("{},code_check_character", total + 2)),
        "{rejects}"
    );
    assert!(lines[2].starts_with(&format!("{},", total + 3)), "{rejects}");

    let status = batch_status(&service, &batch).await;
    assert_eq!(status["issued"], total, "{status}");

    // A second batch repeating half of the first: duplicates, never overwritten.
    let overlap = dir.path().join("overlap.csv");
    let mut text = String::from("code,cvc,nominal_minor,currency,expires_at\n");
    for code in all.iter().take(100) {
        text.push_str(&format!("{code},9999,100,RUB,\n"));
    }
    let fresh: Vec<String> = (0..50).map(|_| new_code()).collect();
    for code in &fresh {
        text.push_str(&format!("{code},9999,100,RUB,\n"));
    }
    std::fs::write(&overlap, text).unwrap();
    let second = format!("overlap-{}", service.id);
    let output = run_to_end(load(&service, &overlap, &second, "http")).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(issued_in(&service, &second).await, 50);
    assert_eq!(present(&service, &all[..100]).await, [(Some(batch.clone()), 100)]);
    let status = batch_status(&service, &second).await;
    assert_eq!(status["duplicates"], 100, "{status}");
    assert_eq!(status["issued"], 50, "{status}");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_load_killed_midway_resumes_without_issuing_twice() {
    let sms = sms_provider(200).await;
    let service = Service::start(&sms.uri(), |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let total = 20_000;
    let file = generate(dir.path(), "batch.csv", total as u64);
    let batch = format!("kafka-{}", service.id);
    load_killed_then_resumed(&service, &file, &batch, "kafka", total).await;
    // The service consumes at its own pace: wait for all of it.
    let started = Instant::now();
    while issued_in(&service, &batch).await < total {
        assert!(started.elapsed() < Duration::from_secs(120), "not all issued");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        present(&service, &codes(&file)).await,
        [(Some(batch.clone()), total)]
    );
    service.stop().await;
}
