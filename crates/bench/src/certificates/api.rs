//! The service's HTTP API as the benchmark calls it, and the errors a phase counts.

use super::{AMOUNT_MINOR, INITIATOR};
use crate::gift::{CURRENCY, LOADER_TOKEN, NOMINAL_MINOR, PAYMENTS_TOKEN, POS_TOKEN};
use anyhow::Context;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Clone)]
pub(super) struct Api {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
}

pub(super) fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Api {
    async fn post(&self, path: &str, token: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("idempotency-key", key())
            .header("x-initiator", INITIATOR)
            .json(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    pub(super) async fn upload(
        &self,
        batch_id: &str,
        job: u32,
        rows: &[(String, String)],
    ) -> anyhow::Result<u64> {
        let certificates: Vec<Value> = rows
            .iter()
            .map(|(code, cvc)| json!({"code": code, "cvc": cvc, "nominal_minor": NOMINAL_MINOR, "currency": CURRENCY}))
            .collect();
        let body = json!({"version": 1, "batch_id": batch_id, "job": job, "certificates": certificates});
        let (status, answer) = self
            .post("/certificates/upload/batch", LOADER_TOKEN, &body)
            .await?;
        anyhow::ensure!(status == 200, "upload job {job}: HTTP {status} {answer}");
        Ok(answer["issued"].as_u64().unwrap_or(0))
    }

    /// Activates a certificate; returns its id.
    async fn activate(&self, code: &str, n: usize) -> anyhow::Result<String> {
        let body = json!({"client_id": format!("bench-client-{n}"), "order_id": format!("bench-order-{n}"),
                          "payment_id": format!("bench-payment-{n}")});
        let (status, answer) = self
            .post(&format!("/certificates/{code}/activate"), PAYMENTS_TOKEN, &body)
            .await?;
        anyhow::ensure!(status == 200, "activate: HTTP {status} {answer}");
        answer["certificate_id"]
            .as_str()
            .map(str::to_owned)
            .context("activate: no certificate_id")
    }

    /// Authorizes `AMOUNT_MINOR`; returns the hold id.
    pub(super) async fn authorize(&self, code: &str, cvc: &str) -> anyhow::Result<String> {
        let body = json!({"amount_minor": AMOUNT_MINOR, "currency": CURRENCY, "cvc": cvc});
        let (status, answer) = self
            .post(&format!("/certificates/{code}/authorize"), POS_TOKEN, &body)
            .await?;
        anyhow::ensure!(status == 201, "authorize: HTTP {status} {answer}");
        answer["operation_id"]
            .as_str()
            .map(str::to_owned)
            .context("authorize: no operation_id")
    }

    pub(super) async fn capture(&self, code: &str, hold: &str) -> anyhow::Result<()> {
        let body = json!({"hold_id": hold, "amount_minor": AMOUNT_MINOR, "currency": CURRENCY});
        let (status, answer) = self
            .post(&format!("/certificates/{code}/capture"), POS_TOKEN, &body)
            .await?;
        anyhow::ensure!(status == 200, "capture: HTTP {status} {answer}");
        Ok(())
    }

    pub(super) async fn balance(&self, code: &str, cvc: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .get(format!("{}/certificates/{code}/balance", self.base))
            .bearer_auth(POS_TOKEN)
            .header("x-certificate-cvc", cvc)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let _ = resp.bytes().await?;
        anyhow::ensure!(status == 200, "balance: HTTP {status}");
        Ok(())
    }

    /// Activates `codes` with up to 16 requests in flight; returns their certificate ids in order.
    pub(super) async fn activate_all(
        &self,
        codes: &[(String, String)],
        offset: usize,
    ) -> anyhow::Result<Vec<String>> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        stream::iter(codes.iter().enumerate())
            .map(|(i, (code, _))| {
                let api = self.clone();
                async move { api.activate(code, offset + i).await }
            })
            .buffered(16)
            .try_collect()
            .await
    }
}

/// Errors of a phase: how many, and the first message.
#[derive(Default)]
pub(super) struct Errors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Errors {
    pub(super) fn record(&self, e: &anyhow::Error) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first.lock() {
            first.get_or_insert_with(|| format!("{e:#}"));
        }
    }

    pub(super) fn report(&self) -> Value {
        let first = self.first.lock().ok().and_then(|f| f.clone());
        json!({"count": self.count.load(Ordering::Relaxed), "first": first})
    }
}
