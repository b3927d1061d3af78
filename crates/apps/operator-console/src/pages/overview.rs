//! The overview: both services' figures and charts.

use super::*;

struct Figure {
    label: &'static str,
    value: String,
    /// `ok`, `warn` or `bad`: how it reads at a glance.
    tone: &'static str,
}

/// `warn` when `over`, else `ok`.
fn warn_if(over: bool) -> &'static str {
    if over {
        "warn"
    } else {
        "ok"
    }
}

/// `bad` when `over`, else `ok`.
fn bad_if(over: bool) -> &'static str {
    if over {
        "bad"
    } else {
        "ok"
    }
}

fn figure(label: &'static str, value: impl Into<String>, tone: &'static str) -> Figure {
    Figure {
        label,
        value: value.into(),
        tone,
    }
}

struct CrmCard {
    vendor: String,
    figures: Vec<Figure>,
    reasons: Vec<(String, u64)>,
    attempts: BarChart,
    lag: LineChart,
}

struct GiftCard {
    figures: Vec<Figure>,
    states: Vec<(String, u64)>,
    operations: BarChart,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Nav,
    hours: u32,
    crm: Option<CrmCard>,
    crm_error: Option<String>,
    gift: Option<GiftCard>,
    gift_error: Option<String>,
    services: Vec<(&'static str, bool)>,
}

fn crm_card(o: CrmOverview) -> CrmCard {
    let ratio = o.window.success_ratio;
    let dead: u64 = o.window.dead_letters_by_reason.values().sum();
    let figures = vec![
        figure(
            "Success ratio",
            ratio.map_or_else(|| "—".to_owned(), |r| format!("{:.1} %", r * 100.0)),
            match ratio {
                Some(r) if r < 0.95 => "bad",
                Some(r) if r < 0.99 => "warn",
                _ => "ok",
            },
        ),
        figure("Lag p50", ms(o.window.lag_p50_ms), "ok"),
        figure(
            "Lag p99",
            ms(o.window.lag_p99_ms),
            warn_if(o.window.lag_p99_ms.unwrap_or(0.0) > 5000.0),
        ),
        figure(
            "Retry queue",
            o.now.retry_queue_depth.to_string(),
            warn_if(o.now.retry_queue_depth > 0),
        ),
        figure("Dead letters", dead.to_string(), bad_if(dead > 0)),
        figure(
            "Breaker",
            if o.now.crm_paused {
                format!("{} (vendor paused)", o.now.breaker)
            } else {
                o.now.breaker.clone()
            },
            bad_if(o.now.breaker != "closed" || o.now.crm_paused),
        ),
        figure(
            "Consumer lag",
            o.now.consumer_lag.to_string(),
            warn_if(o.now.consumer_lag > 10_000),
        ),
        figure(
            "Outbox backlog",
            o.now
                .outbox_depth
                .map_or_else(|| "—".to_owned(), |d| d.to_string()),
            warn_if(o.now.outbox_depth.unwrap_or(0) > 1000),
        ),
    ];
    let columns: Vec<Column> = o
        .series
        .buckets
        .iter()
        .map(|b| Column {
            label: hhmm(&b.start),
            values: vec![b.success, b.skipped, b.retry_scheduled, b.dead_lettered],
        })
        .collect();
    let lags: Vec<Option<f64>> = o.series.buckets.iter().map(|b| b.lag_p99_ms).collect();
    CrmCard {
        vendor: o.vendor,
        figures,
        reasons: o.window.dead_letters_by_reason.into_iter().collect(),
        attempts: chart::bars(
            "CRM attempts",
            &[
                ("synced", "s-ok"),
                ("skipped", "s-skip"),
                ("retried", "s-warn"),
                ("dead-lettered", "s-bad"),
            ],
            &columns,
        ),
        lag: chart::line("Event-to-CRM lag p99", "ms", &lags),
    }
}

fn gift_card(o: GiftOverview) -> GiftCard {
    let figures = vec![
        figure(
            "Outbox pending",
            o.outbox.pending.to_string(),
            warn_if(o.outbox.pending > 1000),
        ),
        figure(
            "Outbox parked",
            o.outbox.parked.to_string(),
            bad_if(o.outbox.parked > 0),
        ),
        figure(
            "Oldest pending",
            o.outbox
                .oldest_pending_age_seconds
                .map_or_else(|| "—".to_owned(), |s| format!("{s:.0} s")),
            warn_if(o.outbox.oldest_pending_age_seconds.unwrap_or(0.0) > 60.0),
        ),
        figure("SMS queued", o.sms.pending.to_string(), "ok"),
        figure("SMS failed", o.sms.failed.to_string(), bad_if(o.sms.failed > 0)),
        figure("Uploads open", o.uploads.open.to_string(), "ok"),
    ];
    let columns: Vec<Column> = o
        .series
        .buckets
        .iter()
        .map(|b| Column {
            label: hhmm(&b.start),
            values: vec![b.operations, b.refused],
        })
        .collect();
    GiftCard {
        figures,
        states: o.certificates_by_state.into_iter().collect(),
        operations: chart::bars(
            "Certificate operations",
            &[("applied", "s-ok"), ("refused", "s-bad")],
            &columns,
        ),
    }
}

#[derive(serde::Deserialize)]
pub struct Hours {
    hours: Option<u32>,
}

pub async fn overview(State(c): St, headers: HeaderMap, Query(q): Query<Hours>) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    let hours = q.hours.filter(|h| (1..=48).contains(h)).unwrap_or(6);
    let (crm, gift, services) = tokio::join!(
        c.backends.crm_overview::<CrmOverview>(hours),
        c.backends.gift_overview::<GiftOverview>(),
        c.backends.ready()
    );
    Ok(render(&OverviewPage {
        nav: Nav::of(&s, "overview"),
        hours,
        crm_error: crm.as_ref().err().map(ToString::to_string),
        crm: crm.ok().map(crm_card),
        gift_error: gift.as_ref().err().map(ToString::to_string),
        gift: gift.ok().map(gift_card),
        services,
    }))
}
