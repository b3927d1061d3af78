//! Transport security, for real: crm-sync over TLS to a broker whose certificate this test's own
//! CA signed, over SASL_SSL with SCRAM-SHA-512, and to PostgreSQL with `sslmode=verify-full`; and
//! clients without the CA, without TLS, with the wrong password or without a client certificate
//! refused. See `docs/transport-security.md`.
//!
//! tansu 0.6.0 cannot serve TLS (its `--cert`/`--key` are mutually exclusive and the TLS
//! acceptor is never used), so each test's broker advertises a TLS front in this process that
//! forwards the decrypted bytes to it: the Kafka clients do real TLS, certificate and host-name
//! checks against that front. SASL is tansu's own (`--authentication`).

use backbone_tests::tls::*;
use backbone_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a metadata request may take; a refused client waits all of it.
const PROBE: Duration = Duration::from_secs(6);
const SHIPMENTS: usize = 6;
const USER: &str = "crm-sync";
const PASSWORD: &str = "scram-password-0123456789";

fn with(mut base: BTreeMap<String, String>, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    for (k, v) in extra {
        base.insert((*k).to_owned(), (*v).to_owned());
    }
    base
}

/// Asserts that `probe` could not read metadata and, when `because` is not empty, that
/// librdkafka said one of `because` on the way; prints what it said.
fn refused(what: &str, probe: &Probe, because: &[&str]) {
    assert!(!probe.ok(), "{what} read metadata: {probe:?}");
    assert!(
        because.is_empty() || probe.said(because),
        "{what} was refused, but not for the expected reason ({because:?}): {probe:?}"
    );
    let first = probe
        .reports
        .first()
        .map(String::as_str)
        .unwrap_or("(nothing reported)");
    eprintln!("refused as expected, {what}: {first}");
}

/// Two statuses per shipment, in order.
async fn produce_events(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    topic: &str,
) -> anyhow::Result<usize> {
    let producer = producer_with(brokers, properties)?;
    let mut n = 0;
    for s in 0..SHIPMENTS {
        let shipment = format!("ship-{s}");
        for (i, status) in ["CREATED", "DELIVERED"].iter().enumerate() {
            let doc = event_json(
                &format!("ev-{s}-{i}"),
                &shipment,
                status,
                &format!("2026-11-01T10:0{i}:00Z"),
            );
            send(&producer, topic, &shipment, &doc).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Every event at a final outcome in `pool`, and the CRM showing every shipment delivered.
async fn assert_synced(pool: &PgPool, sim: &crm_sim::Sim, events: usize) -> anyhow::Result<()> {
    let pool = pool.clone();
    eventually(
        Duration::from_secs(60),
        "every event at a final outcome in processed_events",
        || {
            let pool = pool.clone();
            async move {
                let finals: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM processed_events WHERE outcome IN ('success', 'stale', 'unchanged')",
                )
                .fetch_one(&pool)
                .await?;
                Ok(finals == events as i64)
            }
        },
    )
    .await?;
    for s in 0..SHIPMENTS {
        let shipment = format!("ship-{s}");
        let record = sim
            .record(&shipment)
            .unwrap_or_else(|| panic!("{shipment} never reached the CRM"));
        assert_eq!(record["status"], "delivered", "{shipment}");
    }
    assert_eq!(sim.stats().duplicate_writes, 0, "an event was written twice");
    Ok(())
}

/// Reads the outcome topic from the beginning over `properties` until `want` records came.
async fn count_outcomes(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    topic: &str,
    partitions: i32,
    want: usize,
) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = client_config(brokers, properties)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut n = 0;
        while n < want && start.elapsed() < Duration::from_secs(30) {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(_)) => n += 1,
                Some(Err(e)) => eprintln!("outcome reader: {e}"),
                None => {}
            }
        }
        n
    })
    .await
    .map_err(Into::into)
}

/// Connects `url` until the service has made its schema there (it creates the database).
async fn wait_for_schema(url: &str) -> anyhow::Result<PgPool> {
    let start = Instant::now();
    loop {
        let last = match sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
        {
            Ok(pool) => match sqlx::query("SELECT 1 FROM processed_events LIMIT 1")
                .execute(&pool)
                .await
            {
                Ok(_) => return Ok(pool),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if start.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("crm-sync did not create its schema over TLS within 30 s; last error: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// TLS to the broker (CA checked, host name checked) and `sslmode=verify-full` to PostgreSQL:
/// crm-sync syncs every event, and its outcomes can be read back over TLS. Plaintext, an unknown
/// CA and a certificate for another host are refused by the broker side; `sslmode=disable` and
/// an unknown CA by PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_sync_over_tls_kafka_and_verify_full_postgres() -> anyhow::Result<()> {
    let started = Instant::now();
    let pki = Pki::new("backbone e2e CA")?;
    let stranger = Pki::new("some other CA")?;
    let kafka_cert = pki.server("kafka", &["localhost", "127.0.0.1"])?;
    let (tansu, front, brokers) = tls_broker(&kafka_cert, None, None).await?;
    let tls = ssl_properties(&pki.ca_pem);

    // A certificate for another name, served for the same broker.
    let elsewhere = pki.server("elsewhere", &["kafka.elsewhere.test"])?;
    let listeners = TlsFront::bind().await?;
    let elsewhere_port = listeners[0].local_addr()?.port();
    let _elsewhere_front = TlsFront::start(listeners, &elsewhere, None, tansu.listen)?;

    let elsewhere_brokers = format!("localhost:{elsewhere_port}");
    let no_name_check = with(tls.clone(), &[("ssl.endpoint.identification.algorithm", "none")]);
    let (good, plaintext, unknown_ca, wrong_host, wrong_host_unchecked) = tokio::join!(
        probe(brokers.clone(), tls.clone(), PROBE),
        probe(brokers.clone(), BTreeMap::new(), PROBE),
        probe(brokers.clone(), ssl_properties(&stranger.ca_pem), PROBE),
        probe(elsewhere_brokers.clone(), tls.clone(), PROBE),
        probe(elsewhere_brokers, no_name_check, PROBE),
    );
    assert!(
        good.ok(),
        "a TLS client with the CA could not read metadata: {good:?}\nbroker log:\n{}",
        tansu.log_tail()
    );
    refused("a plaintext client", &plaintext, &[]);
    // A Kafka request where a TLS record should be: rustls says "corrupt message".
    let reasons = front.reasons_since(0);
    assert!(
        reasons.iter().any(|r| r.contains("corrupt message")),
        "the TLS listener did not refuse the plaintext client: {reasons:?}"
    );
    eprintln!("  the TLS listener saw: {reasons:?}");
    refused(
        "a client without the CA",
        &unknown_ca,
        &["certificate verify failed"],
    );
    refused(
        "a certificate for another host name",
        &wrong_host,
        &["certificate verify failed"],
    );
    // The same certificate passes once the name is not checked: the name was the reason.
    assert!(
        wrong_host_unchecked.ok(),
        "the other host's certificate failed for another reason than its name: {wrong_host_unchecked:?}"
    );

    // PostgreSQL that takes TLS only.
    let pg_cert = pki.server("postgres", &["localhost", "127.0.0.1"])?;
    let pg = tokio::task::spawn_blocking(move || TlsPostgres::start(&pg_cert)).await??;
    let verify_full = format!("sslmode=verify-full&sslrootcert={}", pki.ca_pem.display());
    let admin = PgPool::connect(&pg.url("postgres", &verify_full))
        .await
        .map_err(|e| anyhow::anyhow!("verify-full connection failed: {e}\n{}", pg.log_tail()))?;
    let (ssl, version): (bool, String) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&admin)
            .await?;
    assert!(ssl, "the verify-full connection is not encrypted");
    assert!(version.starts_with("TLSv1."), "{version}");
    admin.close().await;
    let plain = PgPool::connect(&pg.url("postgres", "sslmode=disable")).await;
    let refusal = plain.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        refusal.contains("no pg_hba.conf entry") && refusal.contains("no encryption"),
        "a connection without TLS was not refused as expected: {refusal:?}"
    );
    eprintln!("refused as expected, sslmode=disable: {refusal}");
    let strange = PgPool::connect(&pg.url(
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", stranger.ca_pem.display()),
    ))
    .await;
    let strange = strange
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| panic!("verify-full accepted a server certificate from a CA it was not given"));
    eprintln!("refused as expected, verify-full with another CA: {strange}");

    // crm-sync over both.
    let mut scope = Scope::new("tls");
    scope.kafka.client.brokers = brokers.clone();
    scope.kafka.client.properties = tls.clone();
    scope.db_url = pg.url("crm_sync_tls", &verify_full);
    scope.create_topics().await?;
    let (sim, crm_url) = start_sim().await?;
    let events = produce_events(&brokers, &tls, &scope.kafka.input_topic).await?;

    let shutdown = CancellationToken::new();
    let service = tokio::spawn(crm_sync::run(scope.config(&crm_url), shutdown.clone()));
    let result = async {
        let pool = wait_for_schema(&scope.db_url).await?;
        assert_synced(&pool, &sim, events).await?;
        let outcomes = count_outcomes(
            &brokers,
            &tls,
            &scope.kafka.outcome_topic,
            scope.kafka.client.topic_partitions,
            events,
        )
        .await?;
        assert_eq!(outcomes, events, "outcome records read back over TLS");
        anyhow::Ok(())
    }
    .await;
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(30), service).await;
    result?;
    stopped
        .map_err(|_| anyhow::anyhow!("crm-sync did not stop within 30 s"))?
        .map_err(|e| anyhow::anyhow!("crm-sync task: {e}"))??;
    eprintln!("tls + verify-full: {:?}", started.elapsed());
    Ok(())
}

/// SASL_SSL with SCRAM-SHA-512, the production setting for Apache Kafka and Amazon MSK: the
/// right password is accepted, a wrong one, an unknown user and a client without SASL are not;
/// crm-sync syncs every event with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_sync_over_sasl_ssl_scram_sha_512() -> anyhow::Result<()> {
    let started = Instant::now();
    let pki = Pki::new("backbone e2e CA")?;
    let kafka_cert = pki.server("kafka", &["localhost", "127.0.0.1"])?;
    let (tansu, _front, brokers) = tls_broker(&kafka_cert, None, Some((USER, PASSWORD))).await?;
    let scram = scram_properties(&pki.ca_pem, USER, PASSWORD);

    let plain = with(
        scram.clone(),
        &[
            ("sasl.mechanism", "PLAIN"),
            ("sasl.password", "any-password-at-all"),
        ],
    );
    let (good, wrong_password, unknown_user, no_sasl, plain) = tokio::join!(
        probe(brokers.clone(), scram.clone(), PROBE),
        probe(
            brokers.clone(),
            scram_properties(&pki.ca_pem, USER, "not-the-password"),
            PROBE
        ),
        probe(
            brokers.clone(),
            scram_properties(&pki.ca_pem, "nobody", PASSWORD),
            PROBE
        ),
        probe(brokers.clone(), ssl_properties(&pki.ca_pem), PROBE),
        probe(brokers.clone(), plain, PROBE),
    );
    assert!(
        good.ok(),
        "SCRAM-SHA-512 with the right password could not read metadata: {good:?}\nbroker log:\n{}",
        tansu.log_tail()
    );
    refused("a wrong password", &wrong_password, &["invalid-proof"]);
    refused("an unknown user", &unknown_user, &["unknown-user"]);
    // tansu closes the connection at the first request that is not part of SASL.
    refused(
        "a client without SASL",
        &no_sasl,
        &["closed by peer", "disconnected", "connection reset"],
    );
    // tansu 0.6.0 offers SCRAM only: it drops a PLAIN handshake (NoSharedMechanism). Its PLAIN
    // check would take any password, so this must stay refused.
    refused("SASL PLAIN", &plain, &["PLAIN mechanism handshake failed"]);

    let mut scope = Scope::new("sasl");
    scope.kafka.client.brokers = brokers.clone();
    scope.kafka.client.properties = scram.clone();
    scope.create_topics().await?;
    let (sim, crm_url) = start_sim().await?;
    let events = produce_events(&brokers, &scram, &scope.kafka.input_topic).await?;

    let shutdown = CancellationToken::new();
    let service = tokio::spawn(crm_sync::run(scope.config(&crm_url), shutdown.clone()));
    let result = async {
        let pool = scope.wait_for_schema().await?;
        assert_synced(&pool, &sim, events).await?;
        anyhow::Ok(())
    }
    .await;
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(30), service).await;
    scope.drop_database().await;
    result?;
    stopped
        .map_err(|_| anyhow::anyhow!("crm-sync did not stop within 30 s"))?
        .map_err(|e| anyhow::anyhow!("crm-sync task: {e}"))??;
    eprintln!("sasl_ssl scram-sha-512: {:?}", started.elapsed());
    Ok(())
}

/// Mutual TLS (as on a broker that authenticates clients by certificate): a client certificate
/// the CA signed is accepted; none, or one from another CA, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_the_ca_signed() -> anyhow::Result<()> {
    let pki = Pki::new("backbone e2e CA")?;
    let stranger = Pki::new("some other CA")?;
    let kafka_cert = pki.server("kafka", &["localhost", "127.0.0.1"])?;
    let (tansu, front, brokers) = tls_broker(&kafka_cert, Some(&pki.ca_pem), None).await?;
    let ours = pki.client("client", "crm-sync")?;
    let theirs = stranger.client("client", "crm-sync")?;
    let tls = ssl_properties(&pki.ca_pem);
    let cert = |leaf: &Leaf| {
        with(
            tls.clone(),
            &[
                ("ssl.certificate.location", &leaf.cert.display().to_string()),
                ("ssl.key.location", &leaf.key.display().to_string()),
            ],
        )
    };

    let good = probe(brokers.clone(), cert(&ours), PROBE).await;
    assert!(
        good.ok(),
        "a client with a certificate the CA signed could not read metadata: {good:?}\nbroker log:\n{}",
        tansu.log_tail()
    );
    let before = front.refusals().len();
    let none = probe(brokers.clone(), tls.clone(), PROBE).await;
    refused("a client without a certificate", &none, &[]);
    let reasons = front.reasons_since(before);
    assert!(
        reasons.iter().any(|r| r.contains("no certificates")),
        "the TLS listener did not refuse the missing client certificate: {reasons:?}"
    );
    eprintln!("  the TLS listener saw: {reasons:?}");
    // librdkafka does not even send a certificate the server's CA list does not name.
    let before = front.refusals().len();
    let other = probe(brokers.clone(), cert(&theirs), PROBE).await;
    refused("a client certificate from another CA", &other, &[]);
    eprintln!("  the TLS listener saw: {:?}", front.reasons_since(before));
    Ok(())
}
