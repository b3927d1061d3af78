//! Latency at a steady (open-loop) request rate: pairs at rate / 2, the capture sent when its
//! authorize answers.

use super::api::{Api, Errors};
use super::throughput::storage_mean_ms;
use super::{Args, Bench};
use crate::report::{mean, percentile, round};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Latencies in ms, each sorted.
pub(super) struct Latency {
    pub(super) all: Vec<f64>,
    pub(super) authorize: Vec<f64>,
    pub(super) capture: Vec<f64>,
    pub(super) pair: Vec<f64>,
    achieved_rps: f64,
    pub(super) authorize_storage_ms: f64,
    pub(super) capture_storage_ms: f64,
    errors: Value,
}

/// One pair; its authorize and capture latency in ms, `None` if either failed.
async fn timed_pair(api: Api, code: String, cvc: String, errors: Arc<Errors>) -> Option<(f64, f64)> {
    let t0 = Instant::now();
    let hold = match api.authorize(&code, &cvc).await {
        Ok(h) => h,
        Err(e) => {
            errors.record(&e);
            return None;
        }
    };
    let t1 = Instant::now();
    match api.capture(&code, &hold).await {
        Ok(()) => Some((
            (t1 - t0).as_secs_f64() * 1000.0,
            t1.elapsed().as_secs_f64() * 1000.0,
        )),
        Err(e) => {
            errors.record(&e);
            None
        }
    }
}

pub(super) async fn measure(b: &Bench<'_>, certificates: &[(String, String)]) -> anyhow::Result<Latency> {
    let args = b.args;
    println!(
        "latency: {} requests/s for {} s (authorize + capture pairs at {}/s)",
        args.rate,
        args.latency_seconds,
        args.rate as f64 / 2.0
    );
    let pair_interval = Duration::from_secs_f64(2.0 / args.rate as f64);
    let n_pairs = (args.rate * args.latency_seconds / 2) as usize;
    let errors = Arc::new(Errors::default());
    let m0 = b.service.metrics(b.http).await?;
    let start = Instant::now();
    let mut sends = Vec::with_capacity(n_pairs);
    for i in 0..n_pairs {
        tokio::time::sleep_until((start + pair_interval * i as u32).into()).await;
        let (code, cvc) = certificates[i % certificates.len()].clone();
        sends.push(tokio::spawn(timed_pair(b.api.clone(), code, cvc, errors.clone())));
    }
    let mut authorize = Vec::new();
    let mut capture = Vec::new();
    let mut pair = Vec::new();
    for s in sends {
        if let Some((a, c)) = s.await? {
            authorize.push(a);
            capture.push(c);
            pair.push(a + c);
        }
    }
    pair.sort_by(f64::total_cmp);
    let m1 = b.service.metrics(b.http).await?;
    let achieved_rps = 2.0 * authorize.len() as f64 / start.elapsed().as_secs_f64();
    let mut all: Vec<f64> = authorize.iter().chain(capture.iter()).copied().collect();
    all.sort_by(f64::total_cmp);
    authorize.sort_by(f64::total_cmp);
    capture.sort_by(f64::total_cmp);
    Ok(Latency {
        all,
        authorize,
        capture,
        pair,
        achieved_rps,
        authorize_storage_ms: storage_mean_ms(&m0, &m1, "authorize"),
        capture_storage_ms: storage_mean_ms(&m0, &m1, "capture"),
        errors: errors.report(),
    })
}

impl Latency {
    pub(super) fn p99(&self) -> f64 {
        percentile(&self.all, 0.99)
    }

    pub(super) fn json(&self, args: &Args) -> Value {
        json!({
            "target_requests_per_s": args.rate,
            "achieved_requests_per_s": round(self.achieved_rps, 0),
            "requests": self.all.len(),
            "errors": self.errors,
            "p50_ms": round(percentile(&self.all, 0.5), 2),
            "p99_ms": round(self.p99(), 2),
            "max_ms": round(self.all.last().copied().unwrap_or(f64::NAN), 2),
            "authorize_p50_ms": round(percentile(&self.authorize, 0.5), 2),
            "authorize_p99_ms": round(percentile(&self.authorize, 0.99), 2),
            "capture_p50_ms": round(percentile(&self.capture, 0.5), 2),
            "capture_p99_ms": round(percentile(&self.capture, 0.99), 2),
            "pair_p50_ms": round(percentile(&self.pair, 0.5), 2),
            "pair_p99_ms": round(percentile(&self.pair, 0.99), 2),
            "authorize_http_mean_ms": round(mean(&self.authorize), 2),
            "capture_http_mean_ms": round(mean(&self.capture), 2),
            "authorize_storage_mean_ms": round(self.authorize_storage_ms, 2),
            "capture_storage_mean_ms": round(self.capture_storage_ms, 2),
        })
    }
}
