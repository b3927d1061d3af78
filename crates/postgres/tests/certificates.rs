//! The PostgreSQL certificate store against a real server: the storage contract the in-memory
//! store meets too, on a fresh database.

#![allow(clippy::unwrap_used)]

mod common;

use backbone_certificates::contract::store_contract;
use backbone_postgres::PgCertificates;
use sqlx::PgPool;

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn pg_certificates_meet_the_storage_contract(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.key");
    backbone_kms::generate_key_file(&key_file).unwrap();
    let keys = backbone_kms::load_local(&backbone_kms::LocalKmsConfig::new(&key_file)).unwrap();
    let store = PgCertificates::connect(&common::url_of(&pool), 4)
        .await
        .unwrap()
        .with_keys(std::sync::Arc::new(keys));
    store_contract(&store).await;
    // Phone numbers are sealed at rest and erased once delivered: no row holds one in clear.
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT row_to_json(d)::text FROM sms_delivery d UNION ALL SELECT row_to_json(s)::text FROM certificate_sale s",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        assert!(
            !row.contains("9990001122") && !row.contains("9990003344"),
            "{row}"
        );
    }
    // What the contract cannot see from outside: one audit row per effect and per issue.
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(audit >= 7, "{audit}");
}

/// Rows written before phone numbers were sealed: the migration erases the numbers that have
/// served (delivered, activated), the service seals the rest at start-up, and a pending delivery
/// still reaches its number.
#[sqlx::test(migrations = false)]
async fn phones_stored_in_clear_before_the_upgrade_are_erased_or_sealed(pool: PgPool) {
    use backbone_certificates::store::SmsQueue;
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            backbone_postgres::certificates::MIGRATOR
                .iter()
                .filter(|m| m.version < 20261203000001)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&pool).await.unwrap();
    let (pending, sent) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for (id, n) in [(pending, 1u8), (sent, 2u8)] {
        sqlx::query(
            "INSERT INTO gift_certificate (id, code_digest, code_last4, currency, nominal, balance, state,
                                           cvc_verifier, cvc_key_id, cvc_wrapped_key, cvc_ciphertext)
             VALUES ($1, $2, 'AB12', 'RUB', 100, 100, 'Active', $3, 'k', '\\x01', '\\x02')",
        )
        .bind(id)
        .bind(vec![n; 32])
        .bind(vec![n; 32])
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO sms_delivery (certificate_id, phone, status) VALUES ($1, '+79990001111', 'pending'),
                                                                        ($2, '+79990002222', 'sent')",
    )
    .bind(pending)
    .bind(sent)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO certificate_sale (order_id, phone, currency, total_minor, lines, source_event, activated_at)
         VALUES ('o-open', '+79990003333', 'RUB', 100, '[]', 'e1', NULL),
                ('o-done', '+79990004444', 'RUB', 100, '[]', 'e2', now())",
    )
    .execute(&pool)
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.key");
    backbone_kms::generate_key_file(&key_file).unwrap();
    let keys = backbone_kms::load_local(&backbone_kms::LocalKmsConfig::new(&key_file)).unwrap();
    // Connecting applies the migration; the service then seals what is left in clear.
    let store = PgCertificates::connect(&common::url_of(&pool), 2)
        .await
        .unwrap()
        .with_keys(std::sync::Arc::new(keys));
    assert_eq!(
        store.seal_clear_phones().await.unwrap(),
        2,
        "the pending delivery and the open sale"
    );
    assert_eq!(store.seal_clear_phones().await.unwrap(), 0);
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT row_to_json(d)::text FROM sms_delivery d UNION ALL SELECT row_to_json(s)::text FROM certificate_sale s",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for row in &rows {
        assert!(!row.contains("999000"), "a number in clear: {row}");
    }
    let tails: Vec<String> = sqlx::query_scalar(
        "SELECT phone_last2 FROM sms_delivery UNION ALL SELECT phone_last2 FROM certificate_sale ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(tails, ["11", "22", "33", "44"]);
    let job = store
        .claim_sms(time::Duration::seconds(30))
        .await
        .unwrap()
        .expect("the pending delivery");
    assert_eq!(
        (job.certificate_id, job.phone.as_deref()),
        (pending, Some("+79990001111"))
    );
}

mod copy_path {
    //! The upload path stages a job's rows by `COPY` (text format) and issues them in one
    //! statement: values COPY must escape, NULLs, a large job, and a staging table that never
    //! carries rows from one unit of work into another.

    use super::common;
    use backbone_certificates::events::Outgoing;
    use backbone_certificates::store::{CertificateStore, IssueBatch, NewCertificate};
    use backbone_certificates::{Amount, Channel, CodeDigest, Currency, SealedCvc};
    use backbone_postgres::PgCertificates;
    use sqlx::{PgPool, Row};
    use std::collections::HashMap;
    use time::{OffsetDateTime, UtcOffset};
    use uuid::Uuid;

    /// Bytes COPY's text format would misread unescaped: backslash, NUL, tab, newline, CR.
    fn digest(n: u32) -> CodeDigest {
        let mut d = [0x5c; 32];
        d[..4].copy_from_slice(&n.to_be_bytes());
        d[4..8].copy_from_slice(&[0x00, b'\t', b'\n', b'\r']);
        CodeDigest(d)
    }

    fn certificate(id: Uuid, code: u32) -> NewCertificate {
        const LAST4: [&str; 4] = ["a\tb\\", "\\N\n\r", "ЖЁ\t1", "AB12"];
        const KEY_IDS: [&str; 3] = ["k\t1\\\n", "\\N", "k2"];
        let expires_at = (code % 3 != 0).then(|| {
            OffsetDateTime::from_unix_timestamp_nanos(
                1_900_000_000_123_456_789 + i128::from(code) * 1_000_000_000,
            )
            .unwrap()
            .to_offset(UtcOffset::from_hms(3, 0, 0).unwrap())
        });
        NewCertificate {
            id,
            code_digest: digest(code),
            code_last4: LAST4[code as usize % 4].into(),
            nominal: Amount::new(100 + i64::from(code), Currency::parse("RUB").unwrap()).unwrap(),
            expires_at,
            cvc_verifier: [(code as u8) ^ 0x5c; 32],
            sealed_cvc: SealedCvc {
                key_id: KEY_IDS[code as usize % 3].into(),
                wrapped_key: vec![0x5c, 0x00, b'\t', b'\n', b'\r', code as u8],
                ciphertext: vec![code as u8; code as usize % 40],
            },
        }
    }

    fn event(c: &NewCertificate) -> Outgoing {
        Outgoing {
            topic: "GiftCertificateState",
            key: c.id.to_string(),
            payload: serde_json::json!({
                "certificate_id": c.id,
                "last4": c.code_last4,
                "note": "tab\there\nnew \\ back \"quoted\" \\N \\x00 \r ✓",
            }),
        }
    }

    fn job(batch_id: &str, job: u32, certificates: Vec<NewCertificate>) -> IssueBatch {
        IssueBatch {
            batch_id: batch_id.into(),
            job,
            rejected: 3,
            certificates,
            channel: Channel::BatchLoader,
            initiator: Some("ops\tteam\\x\n".into()),
            source_event: Some("evt\\N\r\n1".into()),
        }
    }

    /// Issues `batch` in one unit of work, committed or rolled back.
    async fn issue(store: &PgCertificates, batch: &IssueBatch, commit: bool) -> (u64, u64, u64) {
        let events: Vec<Outgoing> = batch.certificates.iter().map(event).collect();
        let mut unit = store.begin().await.unwrap();
        let outcome = unit.issue(batch, &events).await.unwrap();
        if commit {
            unit.commit().await.unwrap();
        } else {
            unit.rollback().await.unwrap();
        }
        (outcome.issued, outcome.already_issued, outcome.duplicates)
    }

    /// Microseconds, as PostgreSQL keeps a timestamptz.
    fn stored_time(t: OffsetDateTime) -> OffsetDateTime {
        t.replace_microsecond(t.microsecond()).unwrap()
    }

    #[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
    async fn a_large_job_with_escaped_values_is_stored_as_sent_in_row_order(pool: PgPool) {
        const ROWS: u32 = 5_000;
        let store = PgCertificates::connect(&common::url_of(&pool), 2).await.unwrap();
        // A code of another batch, issued first.
        let other = job("other", 1, vec![certificate(Uuid::now_v7(), 17)]);
        assert_eq!(issue(&store, &other, true).await, (1, 0, 0));

        // Ids in the reverse of row order: the events must follow the rows, not the ids.
        let mut ids: Vec<Uuid> = (0..ROWS).map(|_| Uuid::now_v7()).collect();
        ids.reverse();
        let mut rows: Vec<NewCertificate> = ids
            .iter()
            .zip(1_000..)
            .map(|(id, code)| certificate(*id, code))
            .collect();
        rows[17].code_digest = digest(17); // the other batch's code
        rows[4_000].code_digest = rows[10].code_digest; // twice in this job: the first row wins
        let batch_id = "copy\\batch\t1\n";
        let batch = job(batch_id, 7, rows.clone());
        assert_eq!(issue(&store, &batch, true).await, (u64::from(ROWS) - 2, 0, 2));
        let issued: Vec<&NewCertificate> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 17 && *i != 4_000)
            .map(|(_, c)| c)
            .collect();

        let stored = sqlx::query(
            "SELECT id, code_digest, code_last4, currency, nominal, balance, state, expires_at, cvc_verifier,
                    cvc_key_id, cvc_wrapped_key, cvc_ciphertext
               FROM gift_certificate WHERE batch_id = $1",
        )
        .bind(batch_id)
        .fetch_all(&pool)
        .await
        .unwrap();
        let stored: HashMap<Uuid, sqlx::postgres::PgRow> =
            stored.into_iter().map(|r| (r.get::<Uuid, _>("id"), r)).collect();
        assert_eq!(stored.len(), issued.len());
        for c in &issued {
            let r = stored
                .get(&c.id)
                .unwrap_or_else(|| panic!("certificate {} stored", c.id));
            assert_eq!(r.get::<Vec<u8>, _>("code_digest"), c.code_digest.0.to_vec());
            assert_eq!(r.get::<String, _>("code_last4"), c.code_last4);
            assert_eq!(r.get::<String, _>("currency"), "RUB");
            assert_eq!(r.get::<i64, _>("nominal"), c.nominal.minor());
            assert_eq!(r.get::<i64, _>("balance"), c.nominal.minor());
            assert_eq!(r.get::<String, _>("state"), "Issued");
            assert_eq!(
                r.get::<Option<OffsetDateTime>, _>("expires_at"),
                c.expires_at.map(stored_time)
            );
            assert_eq!(r.get::<Vec<u8>, _>("cvc_verifier"), c.cvc_verifier.to_vec());
            assert_eq!(
                r.get::<Option<String>, _>("cvc_key_id").as_deref(),
                Some(c.sealed_cvc.key_id.as_str())
            );
            assert_eq!(
                r.get::<Option<Vec<u8>>, _>("cvc_wrapped_key").as_ref(),
                Some(&c.sealed_cvc.wrapped_key)
            );
            assert_eq!(
                r.get::<Option<Vec<u8>>, _>("cvc_ciphertext").as_ref(),
                Some(&c.sealed_cvc.ciphertext)
            );
        }
        assert!(issued.iter().any(|c| c.expires_at.is_none()));

        // One event per issued row, in the job's row order, with the payload as sent.
        let outbox: Vec<(String, String, serde_json::Value)> =
            sqlx::query_as("SELECT topic, key, payload FROM outbox ORDER BY id OFFSET 1")
                .fetch_all(&pool)
                .await
                .unwrap();
        let expected: Vec<(String, String, serde_json::Value)> = issued
            .iter()
            .map(|c| {
                let e = event(c);
                (e.topic.to_owned(), e.key, e.payload)
            })
            .collect();
        assert_eq!(outbox.len(), expected.len());
        assert!(
            outbox == expected,
            "the outbox holds the job's events in row order"
        );

        let audit = sqlx::query(
            "SELECT channel, initiator, source_event, details FROM audit_log WHERE details->>'batch_id' = $1",
        )
        .bind(batch_id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(audit.get::<String, _>("channel"), "BatchLoader");
        assert_eq!(
            audit.get::<Option<String>, _>("initiator").as_deref(),
            Some("ops\tteam\\x\n")
        );
        assert_eq!(
            audit.get::<Option<String>, _>("source_event").as_deref(),
            Some("evt\\N\r\n1")
        );
        assert_eq!(
            audit.get::<serde_json::Value, _>("details"),
            serde_json::json!({"batch_id": batch_id, "submitted": ROWS, "issued": ROWS - 2})
        );
        let job_row = || async {
            sqlx::query_as::<_, (i32, i32, i32, i32)>(
                "SELECT submitted, issued, duplicates, rejected FROM certificate_batch_job
                  WHERE batch_id = $1 AND job = 7",
            )
            .bind(batch_id)
            .fetch_one(&pool)
            .await
            .unwrap()
        };
        let rows_i32 = ROWS as i32;
        assert_eq!(job_row().await, (rows_i32 + 3, rows_i32 - 2, 2, 3));

        // Re-sent: every code of this batch counts as issued before (the twin too), the other
        // batch's code stays a duplicate, and the job's row is kept as first recorded.
        assert_eq!(issue(&store, &batch, true).await, (0, u64::from(ROWS) - 1, 1));
        assert_eq!(job_row().await, (rows_i32 + 3, rows_i32 - 2, 2, 3));
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(events, i64::from(ROWS) - 1);
    }

    async fn count(pool: &PgPool, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
    }

    #[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
    async fn a_rolled_back_job_leaves_nothing_staged_for_the_next_on_its_connection(pool: PgPool) {
        // One connection: every unit of work and every check below runs on the same session.
        let store = PgCertificates::connect(&common::url_of(&pool), 1).await.unwrap();
        let staged = "SELECT count(*) FROM pg_temp.certificate_issue_staging";
        let exists = "SELECT to_regclass('pg_temp.certificate_issue_staging') IS NOT NULL";
        let fresh = |batch: &str, from: u32| {
            job(
                batch,
                1,
                (from..from + 3)
                    .map(|code| certificate(Uuid::now_v7(), code))
                    .collect(),
            )
        };

        // Made by a unit that rolls back, the staging table goes with it.
        assert_eq!(issue(&store, &fresh("rolled-1", 100), false).await, (3, 0, 0));
        let there: bool = sqlx::query_scalar(exists).fetch_one(store.pool()).await.unwrap();
        assert!(!there);

        assert_eq!(issue(&store, &fresh("kept-1", 200), true).await, (3, 0, 0));
        let there: bool = sqlx::query_scalar(exists).fetch_one(store.pool()).await.unwrap();
        assert!(there, "the session keeps its staging table");
        assert_eq!(count(store.pool(), staged).await, 0);

        // Rolled back once the table exists: nothing of it stays staged or stored.
        assert_eq!(issue(&store, &fresh("rolled-2", 300), false).await, (3, 0, 0));
        assert_eq!(count(store.pool(), staged).await, 0);
        // Its codes again, in a new job on the same connection: issued as new, and only them.
        assert_eq!(issue(&store, &fresh("kept-2", 300), true).await, (3, 0, 0));
        assert_eq!(count(store.pool(), staged).await, 0);

        assert_eq!(
            count(
                &pool,
                "SELECT count(*) FROM gift_certificate WHERE batch_id LIKE 'rolled-%'"
            )
            .await,
            0
        );
        assert_eq!(count(&pool, "SELECT count(*) FROM gift_certificate").await, 6);
        assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 6);
        assert_eq!(count(&pool, "SELECT count(*) FROM audit_log").await, 2);
        let jobs: Vec<(String, i32, i32)> =
            sqlx::query_as("SELECT batch_id, submitted, issued FROM certificate_batch_job ORDER BY batch_id")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(jobs, [("kept-1".into(), 6, 3), ("kept-2".into(), 6, 3)]);
    }
}
