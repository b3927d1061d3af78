//! The `batch-loader` binary end to end against a wiremock service: argument wiring, the summary,
//! plain progress lines off a terminal, and a `kill -9` in the middle of a load.
#![allow(clippy::unwrap_used)]

use batch_loader::contract::{UploadAck, UploadJob};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "cli-test-token-31337";

struct Ack {
    delay: Duration,
}

impl Respond for Ack {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let job: UploadJob = serde_json::from_slice(&request.body).unwrap();
        ResponseTemplate::new(200)
            .set_body_json(UploadAck {
                batch_id: job.batch_id,
                job: job.job,
                issued: job.certificates.len() as u64,
                duplicates: 0,
            })
            .set_delay(self.delay)
    }
}

async fn service(delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/certificates/upload/batch"))
        .respond_with(Ack { delay })
        .mount(&server)
        .await;
    server
}

fn loader() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_batch-loader"));
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

async fn generate(file: &Path, count: u32) {
    let out = loader()
        .args([
            "generate",
            "--count",
            &count.to_string(),
            "--nominal",
            "100000",
            "--currency",
            "RUB",
        ])
        .args(["--expires-at", "2030-06-30T12:00:00+03:00", "--out"])
        .arg(file)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

async fn keys_received(server: &MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            r.headers
                .get("idempotency-key")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn generate_then_load_prints_a_summary_and_plain_progress() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("codes.csv");
    generate(&file, 1_500).await;
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("code,cvc,nominal_minor,currency,expires_at"));
    assert!(lines.all(|l| l.ends_with(",100000,RUB,2030-06-30T09:00:00Z")));
    assert_eq!(text.lines().count(), 1_501);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // A second generate to the same file is refused and leaves it alone.
    let again = loader()
        .args([
            "generate",
            "--count",
            "1",
            "--nominal",
            "1",
            "--currency",
            "RUB",
            "--out",
        ])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    let server = service(Duration::from_millis(400)).await;
    let out = loader()
        .arg("load")
        .arg(&file)
        .args(["--batch-id", "cli-1", "--via", "http", "--url", &server.uri()])
        .args([
            "--job-size",
            "500",
            "--concurrency",
            "1",
            "--progress",
            "auto",
            "--progress-every",
            "1",
        ])
        .env("BATCH_LOADER_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("rows 1500 accepted 1500 rejected 0 (duplicates in file 0) jobs 3 (sent 3, skipped as acknowledged 0) issued 1500"),
        "{stdout}"
    );
    // Not a terminal here: plain lines, about one a second over the 1.2 s of sending.
    assert!(stderr.lines().any(|l| l.starts_with("progress ")), "{stderr}");
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3);
    assert!(requests
        .iter()
        .all(|r| r.headers.get("authorization").unwrap() == format!("Bearer {TOKEN}").as_str()));
}

#[tokio::test]
async fn load_arguments_are_checked_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("codes.csv");
    generate(&file, 3).await;
    let no_url = loader()
        .arg("load")
        .arg(&file)
        .args(["--batch-id", "x", "--via", "http"])
        .env("BATCH_LOADER_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert!(!no_url.status.success());
    assert!(String::from_utf8_lossy(&no_url.stderr).contains("--url"));

    let server = service(Duration::ZERO).await;
    let long_id = "b".repeat(65);
    for (args, expected) in [
        (vec!["--batch-id", "bad id!", "--job-size", "10"], "batch id"),
        (vec!["--batch-id", "ü-batch", "--job-size", "10"], "batch id"),
        (vec!["--batch-id", &long_id, "--job-size", "10"], "batch id"),
        (vec!["--batch-id", "ok", "--job-size", "0"], "--job-size"),
        (vec!["--batch-id", "ok", "--job-size", "5001"], "--job-size"),
    ] {
        let out = loader()
            .arg("load")
            .arg(&file)
            .args(["--via", "http", "--url", &server.uri(), "--progress", "off"])
            .args(&args)
            .env("BATCH_LOADER_TOKEN", TOKEN)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("backtrace"), "{stderr}");
    }
    let no_token = loader()
        .arg("load")
        .arg(&file)
        .args(["--batch-id", "x", "--via", "http", "--url", &server.uri()])
        .env_remove("BATCH_LOADER_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(!no_token.status.success());

    // Over Kafka the batch is opened over the API first: the URL and token are needed too.
    let kafka = |url: Option<String>, token: bool| {
        let mut c = loader();
        c.arg("load")
            .arg(&file)
            .args(["--batch-id", "x", "--via", "kafka", "--brokers", "127.0.0.1:1"]);
        if let Some(url) = url {
            c.args(["--url", &url]);
        }
        if token {
            c.env("BATCH_LOADER_TOKEN", TOKEN);
        } else {
            c.env_remove("BATCH_LOADER_TOKEN");
        }
        c
    };
    let no_url = kafka(None, true).output().await.unwrap();
    assert!(!no_url.status.success());
    assert!(String::from_utf8_lossy(&no_url.stderr).contains("--url"));
    let no_token = kafka(Some(server.uri()), false).output().await.unwrap();
    assert!(!no_token.status.success());
    let stderr = String::from_utf8_lossy(&no_token.stderr);
    assert!(
        stderr.contains("BATCH_LOADER_TOKEN") && stderr.contains("--via kafka opens the batch"),
        "{stderr}"
    );
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_load_killed_mid_batch_completes_on_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("codes.csv");
    generate(&file, 2_000).await;
    let server = service(Duration::from_millis(60)).await;
    let args = |c: &mut Command| {
        c.arg("load")
            .arg(&file)
            .args(["--batch-id", "killed", "--via", "http", "--url", &server.uri()])
            .args(["--job-size", "50", "--concurrency", "2", "--progress", "off"])
            .env("BATCH_LOADER_TOKEN", TOKEN);
    };

    let mut first = loader();
    args(&mut first);
    let mut child = first.spawn().unwrap();
    let progress_file = dir.path().join("codes.csv.killed.rejects.csv.progress");
    // Kill once a few jobs are acknowledged, mid-stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&progress_file).map_or(0, |t| t.matches("\nack ").count()) < 5 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "the first run must not have finished");
    let before = keys_received(&server).await;
    assert!(!before.is_empty() && before.len() < 40, "{}", before.len());
    let progress = std::fs::read_to_string(&progress_file).unwrap();
    let acked: BTreeSet<String> = progress
        .lines()
        .filter_map(|l| l.strip_prefix("ack "))
        .map(|l| format!("killed:{}", l.split(' ').next().unwrap()))
        .collect();

    let mut second = loader();
    args(&mut second);
    let out = second.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("jobs 40 (sent"), "{stdout}");
    assert!(stdout.contains("issued 2000"), "{stdout}");

    let all = keys_received(&server).await;
    let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
    for k in &all {
        *per_key.entry(k.as_str()).or_default() += 1;
    }
    assert_eq!(per_key.len(), 40, "every job arrived");
    for (key, n) in &per_key {
        if acked.contains(*key) {
            assert_eq!(
                *n, 1,
                "{key} was acknowledged before the kill and must not be sent again"
            );
        } else {
            // At most the jobs in flight at the kill are sent twice.
            assert!(*n <= 2, "{key} sent {n} times");
        }
    }
    let repeats = per_key.values().filter(|n| **n > 1).count();
    assert!(repeats <= 2, "only the {repeats} in-flight jobs may repeat");
}
