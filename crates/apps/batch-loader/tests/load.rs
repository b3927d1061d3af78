//! Client-side tests of the loader against a wiremock service: generate → validate → send, the
//! reject file, duplicates within a file, retries, and resuming after a stopped run.
#![allow(clippy::unwrap_used)]

use backbone_certificates::code::GiftCode;
use batch_loader::contract::{UploadAck, UploadJob};
use batch_loader::generate::{generate, GenerateOptions};
use batch_loader::load::{load, LoadOptions};
use batch_loader::progress::ProgressMode;
use batch_loader::sink::{HttpSink, Sink};
use secrecy::SecretString;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "loader-test-token";

/// Acknowledges every job whose number is below `fail_from`, answers 503 to the rest.
struct Service {
    fail_from: u32,
}

impl Respond for Service {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let job: UploadJob = serde_json::from_slice(&request.body).unwrap();
        if job.job >= self.fail_from {
            return ResponseTemplate::new(503);
        }
        ResponseTemplate::new(200).set_body_json(UploadAck {
            batch_id: job.batch_id,
            job: job.job,
            issued: job.certificates.len() as u64,
            duplicates: 0,
        })
    }
}

async fn service(fail_from: u32) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/certificates/upload/batch"))
        .respond_with(Service { fail_from })
        .mount(&server)
        .await;
    server
}

fn sink(server: &MockServer, batch: &str) -> Arc<Sink> {
    Arc::new(Sink::Http(
        HttpSink::new(
            &server.uri(),
            SecretString::from(TOKEN),
            batch,
            Duration::from_secs(5),
        )
        .unwrap(),
    ))
}

fn options(file: &Path, batch: &str, job_size: usize) -> LoadOptions {
    LoadOptions {
        job_size,
        concurrency: 2,
        max_attempts: 3,
        retry_base: Duration::from_millis(1),
        progress: ProgressMode::Off,
        ..LoadOptions::new(file, batch)
    }
}

fn generated(dir: &Path, count: u64) -> PathBuf {
    let file = dir.join("batch.csv");
    generate(
        &file,
        &GenerateOptions {
            count,
            nominal_minor: 500_000,
            currency: "RUB".into(),
            expires_at: None,
            overwrite: false,
        },
    )
    .unwrap();
    file
}

fn file_codes(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_owned())
        .collect()
}

async fn jobs_received(server: &MockServer) -> Vec<(String, UploadJob, Vec<u8>)> {
    let mut jobs: Vec<_> = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let key = r
                .headers
                .get("idempotency-key")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let job: UploadJob = serde_json::from_slice(&r.body).unwrap();
            (key, job, r.body)
        })
        .collect();
    jobs.sort_by_key(|(_, j, _)| j.job);
    jobs
}

#[tokio::test]
async fn generated_files_validate_and_arrive_whole_in_numbered_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let file = generated(dir.path(), 2_500);
    let codes = file_codes(&file);
    assert_eq!(codes.len(), 2_500);
    assert!(codes.iter().all(|c| GiftCode::parse(c).is_ok()));

    let server = service(u32::MAX).await;
    let summary = load(options(&file, "b-1", 1_000), sink(&server, "b-1"))
        .await
        .unwrap();
    assert_eq!(
        (
            summary.rows,
            summary.accepted,
            summary.rejected,
            summary.jobs,
            summary.jobs_sent
        ),
        (2_500, 2_500, 0, 3, 3)
    );
    assert_eq!(summary.issued, Some(2_500));

    let requests = server.received_requests().await.unwrap();
    assert!(requests
        .iter()
        .all(|r| r.headers.get("authorization").unwrap() == format!("Bearer {TOKEN}").as_str()));
    assert!(requests
        .iter()
        .all(|r| r.headers.get("content-type").unwrap() == "application/json"));
    let jobs = jobs_received(&server).await;
    let keys: Vec<&str> = jobs.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(keys, ["b-1:0", "b-1:1", "b-1:2"]);
    let sizes: Vec<usize> = jobs.iter().map(|(_, j, _)| j.certificates.len()).collect();
    assert_eq!(sizes, [1_000, 1_000, 500]);
    let sent: Vec<String> = jobs
        .iter()
        .flat_map(|(_, j, _)| j.certificates.iter().map(|c| c.code.clone()))
        .collect();
    assert_eq!(sent, codes, "every code, in file order");
    let first = &jobs[0].1;
    assert_eq!((first.version, first.batch_id.as_str()), (1, "b-1"));
    let c = &first.certificates[0];
    assert_eq!(
        (c.nominal_minor, c.currency.as_str(), c.expires_at.clone()),
        (500_000, "RUB", None)
    );
    assert_eq!(c.cvc.len(), 4);
    // The exact wire shape of one certificate.
    let raw: serde_json::Value = serde_json::from_slice(&jobs[0].2).unwrap();
    let keys: BTreeSet<&str> = raw["certificates"][0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["code", "cvc", "nominal_minor", "currency", "expires_at"])
    );
    let rejects = std::fs::read_to_string(dir.path().join("batch.csv.b-1.rejects.csv")).unwrap();
    assert_eq!(rejects, "line,reason,record\n");
}

fn code(payload: &[u8; 15]) -> String {
    GiftCode::from_payload(payload).unwrap().expose().to_owned()
}

#[tokio::test]
async fn every_rejected_row_is_written_with_its_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let a = code(b"AAAAAAAAAAAAAAA");
    let b = code(b"BBBBBBBBBBBBBBB");
    let c = code(b"CCCCCCCCCCCCCCC");
    let mut typo = a.clone().into_bytes();
    typo[3] = b'Z';
    let typo = String::from_utf8(typo).unwrap();
    let grouped_b = GiftCode::parse(&b).unwrap().grouped().to_lowercase();
    let text = [
        "code,cvc,nominal_minor,currency,expires_at".to_owned(),
        format!("{a},1234,100000,RUB,"),                             // 2 ok
        format!("{typo},1234,100000,RUB,"),                          // 3 check character
        "SHORT,1234,100000,RUB,".to_owned(),                         // 4 format
        format!("{b},12,100000,RUB,"),                               // 5 cvc
        format!("{b},1234,0,RUB,"),                                  // 6 nominal
        format!("{b},1234,100000,RUBLES,"),                          // 7 currency
        format!("{b},1234,100000,RUB,next year"),                    // 8 expiry
        format!("{b},1234,100000"),                                  // 9 columns
        format!("{grouped_b},4321,100000,RUB,2030-01-01T00:00:00Z"), // 10 ok
        format!("{a},9999,100000,RUB,"),                             // 11 duplicate of line 2
        format!("\"{c}\",0001,100000,RUB,"),                         // 12 ok, quoted
        format!("{}, 5555 ,100000,RUB,", b.to_lowercase()),          // 13 duplicate of line 10
    ]
    .join("\n");
    let file = dir.path().join("mixed.csv");
    std::fs::write(&file, format!("{text}\n")).unwrap();
    let rejects = dir.path().join("out").join("rejects.csv");
    std::fs::create_dir(dir.path().join("out")).unwrap();

    let server = service(u32::MAX).await;
    let mut opts = options(&file, "mixed", 2);
    opts.rejects = rejects.clone();
    let summary = load(opts, sink(&server, "mixed")).await.unwrap();
    assert_eq!(
        (
            summary.rows,
            summary.accepted,
            summary.rejected,
            summary.duplicates_in_file,
            summary.jobs
        ),
        (12, 3, 9, 2, 2)
    );

    let written = std::fs::read_to_string(&rejects).unwrap();
    let lines: Vec<(u64, String)> = written
        .lines()
        .skip(1)
        .map(|l| {
            let mut parts = l.splitn(3, ',');
            (
                parts.next().unwrap().parse().unwrap(),
                parts.next().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        (3, "code_check_character"),
        (4, "code_format"),
        (5, "cvc"),
        (6, "nominal_minor"),
        (7, "currency"),
        (8, "expires_at"),
        (9, "column_count"),
        (11, "duplicate_in_file"),
        (13, "duplicate_in_file"),
    ];
    assert_eq!(
        lines,
        expected
            .iter()
            .map(|(n, r)| (*n, r.to_string()))
            .collect::<Vec<_>>()
    );
    // The raw record is kept so the row can be fixed.
    assert!(
        written.contains(&format!("11,duplicate_in_file,\"{a},9999,100000,RUB,\"")),
        "{written}"
    );

    let jobs = jobs_received(&server).await;
    let sent: Vec<(String, String)> = jobs
        .iter()
        .flat_map(|(_, j, _)| j.certificates.iter().map(|c| (c.code.clone(), c.cvc.clone())))
        .collect();
    assert_eq!(
        sent,
        [(a, "1234".into()), (b, "4321".into()), (c, "0001".into())],
        "first sightings win, codes normalised"
    );
    assert_eq!(
        jobs[0].1.certificates[1].expires_at.as_deref(),
        Some("2030-01-01T00:00:00Z")
    );
}

#[tokio::test]
async fn a_stopped_run_resumes_without_resending_acknowledged_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let file = generated(dir.path(), 1_000);

    // First run: jobs 0-3 are acknowledged, job 4 keeps failing, the run stops.
    let first = service(4).await;
    let mut opts = options(&file, "resume-1", 100);
    opts.concurrency = 1;
    let err = load(opts.clone(), sink(&first, "resume-1")).await.unwrap_err();
    let shown = format!("{err:#}");
    assert!(
        shown.contains("gave up after 3 tries") && shown.contains("run the same command again"),
        "{shown}"
    );
    let first_jobs = jobs_received(&first).await;
    let tried: BTreeSet<u32> = first_jobs.iter().map(|(_, j, _)| j.job).collect();
    assert_eq!(tried, BTreeSet::from([0, 1, 2, 3, 4]));
    let progress = std::fs::read_to_string(opts.progress_path()).unwrap();
    assert_eq!(
        progress.lines().filter(|l| l.starts_with("ack ")).count(),
        4,
        "{progress}"
    );

    // Second run, same file and batch: only jobs 4-9 go out, job 4 byte for byte as before.
    let second = service(u32::MAX).await;
    let summary = load(opts.clone(), sink(&second, "resume-1")).await.unwrap();
    assert_eq!(
        (summary.jobs, summary.jobs_sent, summary.jobs_skipped),
        (10, 6, 4)
    );
    assert_eq!(
        summary.issued,
        Some(1_000),
        "counts of skipped jobs come from the progress file"
    );
    let second_jobs = jobs_received(&second).await;
    let keys: Vec<&str> = second_jobs.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "resume-1:4",
            "resume-1:5",
            "resume-1:6",
            "resume-1:7",
            "resume-1:8",
            "resume-1:9"
        ]
    );
    let first_job4 = first_jobs.iter().find(|(_, j, _)| j.job == 4).unwrap();
    assert_eq!(first_job4.2, second_jobs[0].2, "a re-run builds identical jobs");

    // Between both runs every code went out exactly once in an acknowledged job.
    let acked_first: Vec<String> = first_jobs
        .iter()
        .filter(|(_, j, _)| j.job < 4)
        .flat_map(|(_, j, _)| j.certificates.iter().map(|c| c.code.clone()))
        .collect();
    let mut all: Vec<String> = acked_first
        .into_iter()
        .chain(
            second_jobs
                .iter()
                .flat_map(|(_, j, _)| j.certificates.iter().map(|c| c.code.clone())),
        )
        .collect();
    all.sort();
    let mut expected = file_codes(&file);
    expected.sort();
    assert_eq!(all, expected);

    // A third run has nothing left to send.
    let third = service(u32::MAX).await;
    let summary = load(opts, sink(&third, "resume-1")).await.unwrap();
    assert_eq!((summary.jobs_sent, summary.jobs_skipped), (0, 10));
    assert!(third.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_changed_file_is_not_resumed_under_the_same_batch() {
    let dir = tempfile::tempdir().unwrap();
    let file = generated(dir.path(), 300);
    let opts = options(&file, "changed", 100);
    let server = service(1).await;
    let mut first = opts.clone();
    first.max_attempts = 1;
    load(first, sink(&server, "changed")).await.unwrap_err();

    // Drop the first data row: job 0 would now hold different certificates.
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(1);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let again = service(u32::MAX).await;
    let err = load(opts, sink(&again, "changed")).await.unwrap_err();
    assert!(format!("{err:#}").contains("job 0 differs"), "{err:#}");
    assert!(again.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_job_stops_at_once_and_a_throttled_one_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let file = generated(dir.path(), 10);

    let refusing = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(422).set_body_raw(
            r#"{"title":"Unprocessable","code":"idempotency_key_reused","status":422}"#,
            "application/problem+json",
        ))
        .mount(&refusing)
        .await;
    let err = load(options(&file, "refused", 100), sink(&refusing, "refused"))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("HTTP 422 idempotency_key_reused"),
        "{err:#}"
    );
    assert_eq!(
        refusing.received_requests().await.unwrap().len(),
        1,
        "no retry of a 4xx"
    );

    let throttling = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "0"))
        .up_to_n_times(1)
        .mount(&throttling)
        .await;
    Mock::given(method("POST"))
        .respond_with(Service { fail_from: u32::MAX })
        .mount(&throttling)
        .await;
    let mut opts = options(&file, "throttled", 100);
    opts.rejects = dir.path().join("throttled.rejects.csv");
    let summary = load(opts, sink(&throttling, "throttled")).await.unwrap();
    assert_eq!((summary.jobs_sent, summary.issued), (1, Some(10)));
    assert_eq!(throttling.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_answer_for_another_job_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = generated(dir.path(), 5);
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(UploadAck {
            batch_id: "other".into(),
            job: 0,
            issued: 5,
            duplicates: 0,
        }))
        .mount(&server)
        .await;
    let opts = options(&file, "mine", 100);
    let err = load(opts.clone(), sink(&server, "mine")).await.unwrap_err();
    assert!(format!("{err:#}").contains("the answer is for batch"), "{err:#}");
    let progress = std::fs::read_to_string(opts.progress_path()).unwrap();
    assert!(
        progress.starts_with("batch-loader progress v1 batch=mine"),
        "{progress}"
    );
    assert!(!progress.contains("ack "), "{progress}");
}
