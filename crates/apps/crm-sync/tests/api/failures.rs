//! When the store is down (an opaque 503) or slow (a second request with the same key while the
//! first is in flight is `409 idempotency-in-flight`).

use super::webhooks::bitrix;
use super::*;
use backbone_sync::clients::{
    CardChange, CardChanged, Choice, ClientSession, EntityWritten, Hint, IdempotencyClaim, Idempotent,
    Intake, Interaction, Leadership, OperatorTask, OperatorTaskState, OutboxRow, StoreError, StoredCard,
    Task,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Semaphore;

/// [`MemoryClients`] with a fault: every call fails as a lost database would, or card changes
/// wait until the test lets them through.
struct Faulty {
    inner: MemoryClients,
    down: bool,
    /// Card changes take a permit first.
    gate: Option<Arc<Semaphore>>,
    /// Card changes that reached the store.
    entered: Arc<AtomicUsize>,
}

impl Faulty {
    fn check(&self) -> Result<(), StoreError> {
        if self.down {
            // A cause that must stay in the logs.
            return Err(StoreError::Unavailable(
                "connection refused: postgres://secret-dsn".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ClientStore for Faulty {
    async fn change_card(
        &self,
        change: &CardChange,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<CardChanged>, StoreError> {
        self.check()?;
        self.entered.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        self.inner.change_card(change, claim).await
    }
    async fn put_task(
        &self,
        t: &Task,
        r: &str,
        c: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<EntityWritten<Task>>, StoreError> {
        self.check()?;
        self.inner.put_task(t, r, c).await
    }
    async fn put_interaction(
        &self,
        i: &Interaction,
        r: &str,
        c: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<EntityWritten<Interaction>>, StoreError> {
        self.check()?;
        self.inner.put_interaction(i, r, c).await
    }
    async fn card(&self, c: &ClientId) -> Result<Option<StoredCard>, StoreError> {
        self.check()?;
        self.inner.card(c).await
    }
    async fn cards_since(
        &self,
        s: time::OffsetDateTime,
        a: Option<&ClientId>,
        l: i64,
    ) -> Result<Vec<StoredCard>, StoreError> {
        self.check()?;
        self.inner.cards_since(s, a, l).await
    }
    async fn client_of(&self, id: &str) -> Result<Option<ClientId>, StoreError> {
        self.check()?;
        self.inner.client_of(id).await
    }
    async fn intake(&self, h: &[Hint], r: &str) -> Result<Vec<Intake>, StoreError> {
        self.check()?;
        self.inner.intake(h, r).await
    }
    async fn session(&self, c: &ClientId) -> Result<Box<dyn ClientSession>, StoreError> {
        self.check()?;
        self.inner.session(c).await
    }
    async fn operator_tasks(
        &self,
        s: Option<OperatorTaskState>,
        l: i64,
    ) -> Result<Vec<OperatorTask>, StoreError> {
        self.check()?;
        self.inner.operator_tasks(s, l).await
    }
    async fn operator_task(&self, id: i64) -> Result<Option<OperatorTask>, StoreError> {
        self.check()?;
        self.inner.operator_task(id).await
    }
    async fn resolve(
        &self,
        id: i64,
        ch: &Choice,
        by: &str,
        r: &str,
        c: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<OperatorTask>, StoreError> {
        self.check()?;
        self.inner.resolve(id, ch, by, r, c).await
    }
    async fn requeue(&self, c: &ClientId, r: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner.requeue(c, r).await
    }
    async fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        self.check()?;
        self.inner.try_lead().await
    }
    async fn outbox_next(&self, l: i64) -> Result<Vec<OutboxRow>, StoreError> {
        self.check()?;
        self.inner.outbox_next(l).await
    }
    async fn outbox_delete(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.outbox_delete(ids).await
    }
    async fn outbox_depth(&self) -> Result<i64, StoreError> {
        self.check()?;
        self.inner.outbox_depth().await
    }
}

async fn start_faulty(down: bool, gate: Option<Arc<Semaphore>>) -> (App, Arc<AtomicUsize>) {
    let store = MemoryClients::new();
    let entered = Arc::new(AtomicUsize::new(0));
    let faulty = Faulty {
        inner: store.clone(),
        down,
        gate,
        entered: entered.clone(),
    };
    let addr = serve(state_over(Arc::new(faulty), webhook_config())).await;
    let app = App::at(addr, store.clone(), Arc::new(store));
    (app, entered)
}

#[tokio::test]
async fn an_unavailable_store_is_503_and_its_cause_stays_in_the_logs() {
    let (app, _) = start_faulty(true, None).await;
    let (s, b) = app.put("/v1/clients/c-1", "k-1", &card("Ada")).await;
    assert_problem(s, &b, 503, "unavailable");
    assert!(!b.to_string().contains("secret-dsn"), "{b}");
    let (s, b) = app.get("/v1/operator-tasks").await;
    assert_problem(s, &b, 503, "unavailable");
    // A verified webhook that cannot be stored is not acknowledged: the vendor retries.
    let (s, b) = send(bitrix(&app, BITRIX_TOKEN)).await;
    assert_problem(s, &b, 503, "unavailable");
    assert!(!b.to_string().contains("secret-dsn"), "{b}");
}

#[tokio::test]
async fn the_same_key_while_the_first_is_in_flight_is_409() {
    let gate = Arc::new(Semaphore::new(0));
    let (app, entered) = start_faulty(false, Some(gate.clone())).await;
    let app = Arc::new(app);
    let first = {
        let app = app.clone();
        tokio::spawn(async move { app.put("/v1/clients/c-1", "k-1", &card("Ada")).await })
    };
    while entered.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (s, b) = app.put("/v1/clients/c-1", "k-1", &card("Ada")).await;
    assert_problem(s, &b, 409, "idempotency-in-flight");
    // Another caller's same key is not held up.
    let other = {
        let app = app.clone();
        tokio::spawn(async move {
            send(
                app.http
                    .put(app.url("/v1/clients/c-1"))
                    .bearer_auth(DESK_TOKEN)
                    .header("idempotency-key", "k-1")
                    .json(&card("Ada")),
            )
            .await
        })
    };
    while entered.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // The semaphore is fair: the first waiter takes the first permit.
    gate.add_permits(1);
    let (s, first) = first.await.unwrap();
    assert_eq!(s, 201, "{first}");
    gate.add_permits(2);
    let (s, b) = other.await.unwrap();
    assert_eq!(s, 200, "{b}");
    // Once it is done, the key answers the first answer again.
    let (s, again) = app.put("/v1/clients/c-1", "k-1", &card("Ada")).await;
    assert_eq!(s, 201);
    assert_eq!(again, first);
    assert_eq!(app.outbox().await, 1);
}
