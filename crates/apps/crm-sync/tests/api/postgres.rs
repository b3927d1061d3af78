//! The API over the PostgreSQL store, each test on a fresh database: what only a real server
//! shows, the idempotency claim and the webhook's unique delivery under concurrency.

use super::webhooks::bitrix;
use super::*;
use backbone_postgres::PgClients;
use sqlx::PgPool;

async fn start_pg(pool: &PgPool) -> App {
    let clients: Arc<dyn ClientStore> = Arc::new(PgClients::new(pool.clone()));
    let addr = serve(state_over(clients.clone(), webhook_config())).await;
    App::at(addr, MemoryClients::new(), clients)
}

#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn a_key_answers_once_over_postgres_even_when_raced(pool: PgPool) {
    let app = Arc::new(start_pg(&pool).await);
    let mut joins = Vec::new();
    for _ in 0..20 {
        let app = app.clone();
        joins.push(tokio::spawn(async move {
            app.put("/v1/clients/c-1", "same-key", &card("Ada")).await
        }));
    }
    let mut answers = Vec::new();
    for j in joins {
        let (s, b) = j.await.unwrap();
        match s.as_u16() {
            201 => answers.push(b),
            409 => assert_eq!(b["code"], "idempotency-in-flight", "{b}"),
            other => panic!("unexpected {other}: {b}"),
        }
    }
    assert!(!answers.is_empty());
    assert!(answers.iter().all(|a| *a == answers[0]), "one answer for all");
    assert_eq!(app.outbox().await, 1);

    let (s, b) = app.put("/v1/clients/c-1", "same-key", &card("Grace")).await;
    assert_problem(s, &b, 422, "idempotency-key-reused");
    let (s, b) = send(app.write(
        reqwest::Method::PATCH,
        "/v1/clients/c-1",
        "p-1",
        &json!({"fields": {"segment": "vip"}}),
    ))
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["version"], 2);
    let (s, b) = app.get("/v1/clients/c-1").await;
    assert_eq!(s, 200);
    assert_eq!(b["fields"]["segment"], "vip");
    assert_eq!(b["fields"]["first_name"], "Ada");
    assert_eq!(app.outbox().await, 2);
}

#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn fifty_identical_bitrix24_deliveries_store_one_row_in_postgres(pool: PgPool) {
    let app = Arc::new(start_pg(&pool).await);
    let mut joins = Vec::new();
    for _ in 0..50 {
        let app = app.clone();
        joins.push(tokio::spawn(async move {
            bitrix(&app, BITRIX_TOKEN).send().await.unwrap().status()
        }));
    }
    for j in joins {
        assert_eq!(j.await.unwrap(), 200);
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_webhook")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(app.outbox().await, 1);

    let (s, b) = send(bitrix(&app, "wrong-app-token-0123456789")).await;
    assert_problem(s, &b, 403, "forbidden");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_webhook")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}
