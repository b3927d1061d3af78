//! Line numbers in the reject file: exact whatever the line ends (`\n`, `\r\n`, both in one
//! file), across blank lines and quoted fields that span lines, and across the reader's buffer
//! boundaries in a large file.
#![allow(clippy::unwrap_used)]

use backbone_certificates::code::{GiftCode, ALPHABET};
use batch_loader::contract::{UploadAck, UploadJob};
use batch_loader::load::{load, LoadOptions, Summary};
use batch_loader::progress::ProgressMode;
use batch_loader::sink::{HttpSink, Sink};
use secrecy::SecretString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const HEADER: &str = "code,cvc,nominal_minor,currency,expires_at";

struct Ack;

impl Respond for Ack {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let job: UploadJob = serde_json::from_slice(&request.body).unwrap();
        ResponseTemplate::new(200).set_body_json(UploadAck {
            batch_id: job.batch_id,
            job: job.job,
            issued: job.certificates.len() as u64,
            duplicates: 0,
        })
    }
}

async fn service() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/certificates/upload/batch"))
        .respond_with(Ack)
        .mount(&server)
        .await;
    server
}

/// The `n`-th valid code: `n` in base 32 over the code alphabet, with its check character.
fn code(n: usize) -> String {
    let mut payload = [ALPHABET[0]; 15];
    let mut rest = n;
    for slot in payload.iter_mut().rev() {
        *slot = ALPHABET[rest % 32];
        rest /= 32;
    }
    GiftCode::from_payload(&payload).unwrap().expose().to_owned()
}

/// Loads `text` as a batch file; returns the summary and the reject file's (line, reason) pairs.
async fn rejects_of(dir: &Path, name: &str, text: &str, job_size: usize) -> (Summary, Vec<(u64, String)>) {
    let file = dir.join(format!("{name}.csv"));
    std::fs::write(&file, text).unwrap();
    let server = service().await;
    let options = LoadOptions {
        job_size,
        concurrency: 2,
        max_attempts: 2,
        retry_base: Duration::from_millis(1),
        progress: ProgressMode::Off,
        ..LoadOptions::new(&file, name)
    };
    let rejects = options.rejects.clone();
    let sink = Arc::new(Sink::Http(
        HttpSink::new(
            &server.uri(),
            SecretString::from("lines-test-token"),
            name,
            Duration::from_secs(30),
        )
        .unwrap(),
    ));
    let summary = load(options, sink).await.unwrap();
    // Read as CSV: a record with a line break in a field spans lines of the reject file.
    let lines = csv::Reader::from_path(&rejects)
        .unwrap()
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].parse().unwrap(), r[1].to_owned())
        })
        .collect();
    (summary, lines)
}

/// Joins `lines` ending line `i` (from 1) with `end(i)`.
fn file(lines: &[String], end: impl Fn(usize) -> &'static str) -> String {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{l}{}", end(i + 1)))
        .collect()
}

#[tokio::test]
async fn reject_lines_are_exact_with_lf_crlf_and_mixed_line_ends() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> = vec![
        HEADER.into(),
        format!("{},1234,100000,RUB,", code(1)), // 2
        "SHORT,1234,100000,RUB,".into(),         // 3 code_format
        format!("{},1234,100000,RUB,", code(2)), // 4
        format!("{},12,100000,RUB,", code(3)),   // 5 cvc
        format!("{},1234,100000,RUB,", code(4)), // 6
        format!("{},1234,0,RUB,", code(5)),      // 7 nominal_minor
        format!("{},1234,100000,RUB,", code(6)), // 8
    ];
    let expected: Vec<(u64, String)> = vec![
        (3, "code_format".into()),
        (5, "cvc".into()),
        (7, "nominal_minor".into()),
    ];
    let cases: [(&str, String); 5] = [
        ("lf", file(&rows, |_| "\n")),
        ("crlf", file(&rows, |_| "\r\n")),
        (
            "crlf-header-only",
            file(&rows, |i| if i == 1 { "\r\n" } else { "\n" }),
        ),
        (
            "mixed-even",
            file(&rows, |i| if i % 2 == 0 { "\r\n" } else { "\n" }),
        ),
        (
            "mixed-odd",
            file(&rows, |i| if i % 2 == 1 { "\r\n" } else { "\n" }),
        ),
    ];
    for (name, text) in &cases {
        let (summary, lines) = rejects_of(dir.path(), name, text, 2).await;
        assert_eq!(lines, expected, "{name}");
        assert_eq!((summary.rows, summary.accepted), (7, 4), "{name}");
    }
    // The last line without a line end.
    let (_, lines) = rejects_of(dir.path(), "no-final-end", file(&rows, |_| "\r\n").trim_end(), 2).await;
    assert_eq!(lines, expected);
}

#[tokio::test]
async fn blank_lines_and_quoted_line_breaks_count_as_lines() {
    let dir = tempfile::tempdir().unwrap();
    for end in ["\n", "\r\n"] {
        let text = [
            HEADER.to_owned(),
            format!("{},1234,100000,RUB,", code(1)),           // 2
            String::new(),                                     // 3 blank: skipped, but a line
            "SHORT,1234,100000,RUB,".into(),                   // 4 code_format
            format!("\"{}{end}X\",1234,100000,RUB,", code(2)), // 5-6: a quoted field over two lines
            format!("{},12,100000,RUB,", code(3)),             // 7 cvc
            String::new(),                                     // 8 blank
            String::new(),                                     // 9 blank
            format!("{},1234,0,RUB,", code(4)),                // 10 nominal_minor
        ]
        .iter()
        .map(|l| format!("{l}{end}"))
        .collect::<String>();
        let (_, lines) = rejects_of(dir.path(), &format!("blank-{}", end.len()), &text, 2).await;
        let numbers: Vec<u64> = lines.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [4, 5, 7, 10], "line end {end:?}: {lines:?}");
    }
}

#[tokio::test]
async fn reject_lines_stay_exact_across_buffer_boundaries_in_a_large_file() {
    let dir = tempfile::tempdir().unwrap();
    // 60,000 rows (about 2 MB, several reader buffers): every 97th line is bad, line ends
    // change every few lines, so breaks fall on every side of a buffer boundary.
    let total = 60_000;
    let mut text = format!("{HEADER}\r\n");
    let mut expected = Vec::new();
    for i in 0..total {
        let line = i as u64 + 2;
        if line % 97 == 0 {
            text.push_str(&format!("{},9,100000,RUB,", code(i)));
            expected.push((line, "cvc".to_owned()));
        } else {
            text.push_str(&format!("{},1234,100000,RUB,", code(i)));
        }
        text.push_str(if (i / 3) % 2 == 0 { "\r\n" } else { "\n" });
    }
    let (summary, lines) = rejects_of(dir.path(), "large", &text, 5_000).await;
    assert_eq!(summary.rows, total as u64);
    assert_eq!(summary.rejected, expected.len() as u64);
    let off: Vec<_> = lines
        .iter()
        .zip(&expected)
        .filter(|(got, want)| got != want)
        .take(5)
        .collect();
    assert!(
        off.is_empty(),
        "{} of {} off, first: {off:?}",
        lines.len(),
        expected.len()
    );
    assert_eq!(lines, expected);
}
