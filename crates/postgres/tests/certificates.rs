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
