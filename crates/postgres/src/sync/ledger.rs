//! The crm-sync ledger: `integrations_log`, `processed_events` and `sync_retry`, written in bulk
//! (one `UNNEST` statement per table per batch) inside one transaction.

use async_trait::async_trait;
use backbone_sync::event::{EventId, ShipmentId, TrackingEvent};
use backbone_sync::ports::{
    ActivityBucket, AttemptRecord, EventTrace, LedgerBatch, LedgerError, Outcome, ParkedEvent, Recorded,
    SourcePosition, SyncLedger, TraceKey,
};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use std::collections::{BTreeMap, HashMap};
use time::OffsetDateTime;

#[derive(Clone)]
pub struct PgLedger {
    pool: PgPool,
}

impl PgLedger {
    fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Creates the database if needed, connects and applies pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, crate::ConnectError> {
        Ok(Self::new(
            crate::connect(url, max_connections, &super::MIGRATOR).await?,
        ))
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(err("ping"))
    }
}

fn err(context: &'static str) -> impl Fn(sqlx::Error) -> LedgerError {
    move |e| LedgerError(format!("{context}: {e}"))
}

fn i32_of(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[async_trait]
impl SyncLedger for PgLedger {
    async fn recorded(&self, ids: &[EventId]) -> Result<HashMap<EventId, Recorded>, LedgerError> {
        let keys: Vec<&str> = ids.iter().map(EventId::as_str).collect();
        let rows = sqlx::query(
            "SELECT event_id, outcome, replay_count FROM processed_events WHERE event_id = ANY($1)",
        )
        .bind(&keys)
        .fetch_all(&self.pool)
        .await
        .map_err(err("reading processed events"))?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: String = row.get(0);
            let outcome: String = row.get(1);
            let replay: i32 = row.get(2);
            let outcome = Outcome::parse(&outcome)
                .ok_or_else(|| LedgerError(format!("unknown outcome `{outcome}` in processed_events")))?;
            let id = EventId::parse(id).map_err(|e| LedgerError(e.to_string()))?;
            out.insert(
                id,
                Recorded {
                    outcome,
                    replay_count: u32::try_from(replay).unwrap_or(0),
                },
            );
        }
        Ok(out)
    }

    async fn commit(&self, batch: &LedgerBatch) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await.map_err(err("begin"))?;
        insert_attempts(&mut tx, &batch.attempts, FLOW_PARCEL_STATUS)
            .await
            .map_err(err("writing integrations_log"))?;
        upsert_processed(&mut tx, batch).await?;
        if !batch.unpark.is_empty() {
            let ids: Vec<&str> = batch.unpark.iter().map(EventId::as_str).collect();
            sqlx::query("DELETE FROM sync_retry WHERE event_id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .map_err(err("unparking"))?;
        }
        park(&mut tx, &batch.park).await?;
        raise_newest(&mut tx, &batch.newest).await?;
        tx.commit().await.map_err(err("commit"))
    }

    async fn newest_seen(
        &self,
        shipments: &[ShipmentId],
    ) -> Result<HashMap<ShipmentId, OffsetDateTime>, LedgerError> {
        let keys: Vec<&str> = shipments.iter().map(|s| s.as_str()).collect();
        let rows: Vec<(String, OffsetDateTime)> =
            sqlx::query_as("SELECT shipment_id, event_time FROM shipment_newest WHERE shipment_id = ANY($1)")
                .bind(&keys)
                .fetch_all(&self.pool)
                .await
                .map_err(err("reading newest event times"))?;
        rows.into_iter()
            .map(|(s, t)| {
                let s = ShipmentId::parse(s).map_err(|e| LedgerError(e.to_string()))?;
                Ok((s, t))
            })
            .collect()
    }

    async fn due(
        &self,
        partitions: &[(String, i32)],
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, LedgerError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let topics: Vec<&str> = partitions.iter().map(|(t, _)| t.as_str()).collect();
        let parts: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        let rows = sqlx::query(
            "SELECT r.event, r.source_topic, r.source_partition, r.source_offset, r.attempts,
                    r.replay_count, r.next_attempt_at, r.last_error, r.first_failed_at
             FROM sync_retry r
             JOIN UNNEST($1::text[], $2::int[]) AS owned(topic, part)
               ON r.source_topic = owned.topic AND r.source_partition = owned.part
             WHERE r.next_attempt_at <= $3
             ORDER BY r.event_time
             LIMIT $4",
        )
        .bind(&topics)
        .bind(&parts)
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(err("reading due retries"))?;
        rows.iter().map(parked_event).collect()
    }

    async fn retry_depth(&self) -> Result<i64, LedgerError> {
        sqlx::query_scalar("SELECT count(*) FROM sync_retry")
            .fetch_one(&self.pool)
            .await
            .map_err(err("counting retries"))
    }

    async fn trace(&self, id: &EventId) -> Result<EventTrace, LedgerError> {
        let attempts = sqlx::query(
            "SELECT event_id, shipment_id, client_id, correlation_id, payload, http_status,
                    response_excerpt, outcome, attempt, error, event_time, sent_at, latency_ms,
                    source_topic, source_partition, source_offset
             FROM integrations_log WHERE event_id = $1 AND flow = $2 ORDER BY id",
        )
        .bind(id.as_str())
        .bind(FLOW_PARCEL_STATUS)
        .fetch_all(&self.pool)
        .await
        .map_err(err("reading integrations_log"))?;
        let attempts = attempts
            .iter()
            .map(attempt_record)
            .collect::<Result<Vec<_>, _>>()?;
        let recorded = self.recorded(std::slice::from_ref(id)).await?.remove(id);
        let parked = sqlx::query(
            "SELECT event, source_topic, source_partition, source_offset, attempts, replay_count,
                    next_attempt_at, last_error, first_failed_at
             FROM sync_retry WHERE event_id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(err("reading the retry queue"))?;
        Ok(EventTrace {
            attempts,
            recorded,
            parked: parked.as_ref().map(parked_event).transpose()?,
        })
    }

    async fn find_events(
        &self,
        key: &TraceKey,
        since: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<EventId>, LedgerError> {
        let (column, value) = match key {
            TraceKey::Shipment(s) => ("shipment_id", s.as_str()),
            TraceKey::Client(c) => ("client_id", c.as_str()),
            TraceKey::Correlation(c) => ("correlation_id", c.as_str()),
        };
        // `column` is one of three literals above, never input.
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT event_id FROM integrations_log
             WHERE {column} = $1 AND flow = $2 AND sent_at >= $3 AND event_id IS NOT NULL
             GROUP BY event_id ORDER BY max(id) DESC LIMIT $4"
        ))
        .bind(value)
        .bind(FLOW_PARCEL_STATUS)
        .bind(since)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(err("searching integrations_log"))?;
        ids.into_iter()
            .map(|id| EventId::parse(id).map_err(|e| LedgerError(format!("integrations_log: {e}"))))
            .collect()
    }

    async fn activity(
        &self,
        since: OffsetDateTime,
        bucket: time::Duration,
    ) -> Result<Vec<ActivityBucket>, LedgerError> {
        let width = bucket.whole_seconds().max(1);
        let counts = sqlx::query(
            "SELECT date_bin(make_interval(secs => $2), sent_at, $1) AS start, outcome,
                    CASE WHEN outcome = 'dead_lettered'
                         THEN coalesce(trim(split_part(error, ':', 1)), 'unknown') END AS reason,
                    count(*)
             FROM integrations_log WHERE flow = $3 AND sent_at >= $1
             GROUP BY 1, 2, 3",
        )
        .bind(since)
        .bind(width as f64)
        .bind(FLOW_PARCEL_STATUS)
        .fetch_all(&self.pool)
        .await
        .map_err(err("counting integrations_log"))?;
        let lags = sqlx::query(
            "SELECT date_bin(make_interval(secs => $2), sent_at, $1) AS start,
                    percentile_disc(0.5) WITHIN GROUP (ORDER BY lag_ms),
                    percentile_disc(0.99) WITHIN GROUP (ORDER BY lag_ms)
             FROM (SELECT sent_at, (extract(epoch FROM sent_at - event_time) * 1000)::float8 AS lag_ms
                   FROM integrations_log
                   WHERE flow = $3 AND sent_at >= $1 AND outcome = 'success'
                     AND event_time IS NOT NULL) s
             GROUP BY 1",
        )
        .bind(since)
        .bind(width as f64)
        .bind(FLOW_PARCEL_STATUS)
        .fetch_all(&self.pool)
        .await
        .map_err(err("measuring lag in integrations_log"))?;
        let mut buckets: BTreeMap<OffsetDateTime, ActivityBucket> = BTreeMap::new();
        fn at(
            buckets: &mut BTreeMap<OffsetDateTime, ActivityBucket>,
            start: OffsetDateTime,
        ) -> &mut ActivityBucket {
            buckets.entry(start).or_insert_with(|| ActivityBucket {
                start,
                outcomes: BTreeMap::new(),
                dead_letter_reasons: BTreeMap::new(),
                lag_p50_ms: None,
                lag_p99_ms: None,
            })
        }
        for row in &counts {
            let outcome: String = row.get(1);
            let outcome = Outcome::parse(&outcome)
                .ok_or_else(|| LedgerError(format!("integrations_log: unknown outcome `{outcome}`")))?;
            let n = u64::try_from(row.get::<i64, _>(3)).unwrap_or(0);
            let b = at(&mut buckets, row.get(0));
            *b.outcomes.entry(outcome).or_default() += n;
            if let Some(reason) = row.get::<Option<String>, _>(2) {
                *b.dead_letter_reasons.entry(reason).or_default() += n;
            }
        }
        for row in &lags {
            let b = at(&mut buckets, row.get(0));
            b.lag_p50_ms = row.get(1);
            b.lag_p99_ms = row.get(2);
        }
        Ok(buckets.into_values().collect())
    }
}

/// One `sync_retry` row, in the column order `due` and `trace` select.
fn parked_event(row: &sqlx::postgres::PgRow) -> Result<ParkedEvent, LedgerError> {
    let doc: serde_json::Value = row.get(0);
    let wire: backbone_sync::event::TrackingEventWire =
        serde_json::from_value(doc).map_err(|e| LedgerError(format!("parked event: {e}")))?;
    let event = TrackingEvent::try_from(wire).map_err(|e| LedgerError(format!("parked event: {e}")))?;
    Ok(ParkedEvent {
        event,
        source: SourcePosition {
            topic: row.get(1),
            partition: row.get(2),
            offset: row.get(3),
        },
        attempts: u32::try_from(row.get::<i32, _>(4)).unwrap_or(0),
        replay_count: u32::try_from(row.get::<i32, _>(5)).unwrap_or(0),
        next_attempt_at: row.get(6),
        last_error: row.get(7),
        first_failed_at: row.get(8),
    })
}

/// One `integrations_log` row, in the column order `trace` selects.
fn attempt_record(row: &sqlx::postgres::PgRow) -> Result<AttemptRecord, LedgerError> {
    let bad = |what: &str| LedgerError(format!("integrations_log: {what}"));
    let outcome: String = row.get(7);
    let source = match (
        row.get::<Option<String>, _>(13),
        row.get::<Option<i32>, _>(14),
        row.get::<Option<i64>, _>(15),
    ) {
        (Some(topic), Some(partition), Some(offset)) => Some(SourcePosition {
            topic,
            partition,
            offset,
        }),
        _ => None,
    };
    Ok(AttemptRecord {
        event_id: row
            .get::<Option<String>, _>(0)
            .map(EventId::parse)
            .transpose()
            .map_err(|e| bad(&e.to_string()))?,
        shipment_id: row
            .get::<Option<String>, _>(1)
            .map(ShipmentId::parse)
            .transpose()
            .map_err(|e| bad(&e.to_string()))?,
        client_id: row.get(2),
        correlation_id: row.get(3),
        payload: row.get(4),
        http_status: row.get::<Option<i16>, _>(5).and_then(|s| u16::try_from(s).ok()),
        response_excerpt: row.get(6),
        outcome: Outcome::parse(&outcome).ok_or_else(|| bad(&format!("unknown outcome `{outcome}`")))?,
        attempt: u32::try_from(row.get::<i32, _>(8)).unwrap_or(0),
        error: row.get(9),
        event_time: row.get(10),
        sent_at: row.get(11),
        latency_ms: row.get(12),
        source,
    })
}

/// `integrations_log.flow` of the parcel-status flow's rows.
const FLOW_PARCEL_STATUS: &str = "parcel_status";

/// Appends the attempt rows of `flow` with `COPY ... FROM STDIN` (text format): the cheapest bulk
/// path, inside the caller's transaction.
pub(super) async fn insert_attempts(
    connection: &mut PgConnection,
    attempts: &[AttemptRecord],
    flow: &str,
) -> Result<(), sqlx::Error> {
    if attempts.is_empty() {
        return Ok(());
    }
    let mut buf = String::with_capacity(attempts.len() * 512);
    for r in attempts {
        let payload = r.payload.as_ref().map(ToString::to_string);
        let source = r.source.as_ref();
        let fields: [Option<&str>; 4] = [
            r.event_id.as_ref().map(EventId::as_str),
            r.shipment_id.as_ref().map(|s| s.as_str()),
            r.client_id.as_deref(),
            r.correlation_id.as_deref(),
        ];
        for f in fields {
            copy_text(&mut buf, f);
        }
        copy_text(&mut buf, payload.as_deref());
        let status = r.http_status.filter(|s| (100..=599).contains(s));
        copy_text(&mut buf, status.map(|s| s.to_string()).as_deref());
        copy_text(&mut buf, r.response_excerpt.as_deref());
        copy_text(&mut buf, Some(r.outcome.as_str()));
        copy_text(&mut buf, Some(&r.attempt.to_string()));
        copy_text(&mut buf, r.error.as_deref());
        copy_text(&mut buf, r.event_time.map(rfc3339).as_deref());
        copy_text(&mut buf, Some(&rfc3339(r.sent_at)));
        copy_text(&mut buf, r.latency_ms.map(|l| l.to_string()).as_deref());
        copy_text(&mut buf, source.map(|s| s.topic.as_str()));
        copy_text(&mut buf, source.map(|s| s.partition.to_string()).as_deref());
        copy_text(&mut buf, source.map(|s| s.offset.to_string()).as_deref());
        copy_text(&mut buf, Some(flow));
        buf.pop(); // the last field's tab
        buf.push('\n');
    }
    let mut copy = connection
        .copy_in_raw(
            "COPY integrations_log (event_id, shipment_id, client_id, correlation_id, payload, http_status,
                 response_excerpt, outcome, attempt, error, event_time, sent_at, latency_ms, source_topic,
                 source_partition, source_offset, flow) FROM STDIN",
        )
        .await?;
    copy.send(buf.into_bytes()).await?;
    copy.finish().await?;
    Ok(())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// One field of COPY's text format, followed by a tab: `\N` for NULL, and backslash, tab,
/// newline and carriage return escaped.
fn copy_text(buf: &mut String, value: Option<&str>) {
    match value {
        None => buf.push_str("\\N"),
        Some(v) => {
            for ch in v.chars() {
                match ch {
                    // PostgreSQL text cannot hold NUL; a CRM answer that has one loses it here.
                    '\0' => {}
                    '\\' => buf.push_str("\\\\"),
                    '\t' => buf.push_str("\\t"),
                    '\n' => buf.push_str("\\n"),
                    '\r' => buf.push_str("\\r"),
                    c => buf.push(c),
                }
            }
        }
    }
    buf.push('\t');
}

async fn upsert_processed(
    tx: &mut Transaction<'_, Postgres>,
    batch: &LedgerBatch,
) -> Result<(), LedgerError> {
    // One row per id (the last outcome wins): ON CONFLICT cannot touch a row twice per statement.
    let mut latest: HashMap<&str, &Recorded> = HashMap::with_capacity(batch.processed.len());
    for (id, r) in &batch.processed {
        latest.insert(id.as_str(), r);
    }
    if latest.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = latest.keys().copied().collect();
    let outcomes: Vec<&str> = latest.values().map(|r| r.outcome.as_str()).collect();
    let replays: Vec<i32> = latest.values().map(|r| i32_of(r.replay_count)).collect();
    sqlx::query(
        "INSERT INTO processed_events (event_id, outcome, replay_count)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[])
         ON CONFLICT (event_id) DO UPDATE
            SET outcome = EXCLUDED.outcome, replay_count = EXCLUDED.replay_count, updated_at = now()
            -- A final outcome stands, unless a replay from dead.letters replaces it.
            WHERE processed_events.outcome IN ('retry_scheduled', 'dead_lettered')
               OR EXCLUDED.replay_count > processed_events.replay_count",
    )
    .bind(&ids)
    .bind(&outcomes)
    .bind(&replays)
    .execute(&mut **tx)
    .await
    .map_err(err("writing processed_events"))?;
    Ok(())
}

async fn park(tx: &mut Transaction<'_, Postgres>, parked: &[ParkedEvent]) -> Result<(), LedgerError> {
    if parked.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = parked.iter().map(|p| p.event.event_id.as_str()).collect();
    let shipments: Vec<&str> = parked.iter().map(|p| p.event.shipment_id.as_str()).collect();
    let docs: Vec<String> = parked
        .iter()
        .map(|p| serde_json::to_string(&p.event.to_wire()).unwrap_or_default())
        .collect();
    let event_time: Vec<OffsetDateTime> = parked.iter().map(|p| p.event.occurred_at).collect();
    let topics: Vec<&str> = parked.iter().map(|p| p.source.topic.as_str()).collect();
    let parts: Vec<i32> = parked.iter().map(|p| p.source.partition).collect();
    let offsets: Vec<i64> = parked.iter().map(|p| p.source.offset).collect();
    let attempts: Vec<i32> = parked.iter().map(|p| i32_of(p.attempts)).collect();
    let replays: Vec<i32> = parked.iter().map(|p| i32_of(p.replay_count)).collect();
    let next: Vec<OffsetDateTime> = parked.iter().map(|p| p.next_attempt_at).collect();
    // PostgreSQL text cannot hold NUL: the engine strips CRM text, and this keeps any other
    // source from failing the whole batch's commit.
    let errors: Vec<String> = parked.iter().map(|p| p.last_error.replace('\0', "")).collect();
    let first: Vec<OffsetDateTime> = parked.iter().map(|p| p.first_failed_at).collect();
    sqlx::query(
        "INSERT INTO sync_retry (event_id, shipment_id, event, event_time, source_topic,
             source_partition, source_offset, attempts, replay_count, next_attempt_at, last_error,
             first_failed_at)
         SELECT e, s, d::jsonb, et, t, p, o, a, r, n, l, f
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::int[],
                     $7::bigint[], $8::int[], $9::int[], $10::timestamptz[], $11::text[],
                     $12::timestamptz[])
              AS u(e, s, d, et, t, p, o, a, r, n, l, f)
         ON CONFLICT (event_id) DO UPDATE
            SET attempts = EXCLUDED.attempts, next_attempt_at = EXCLUDED.next_attempt_at,
                last_error = EXCLUDED.last_error, replay_count = EXCLUDED.replay_count",
    )
    .bind(&ids)
    .bind(&shipments)
    .bind(&docs)
    .bind(&event_time)
    .bind(&topics)
    .bind(&parts)
    .bind(&offsets)
    .bind(&attempts)
    .bind(&replays)
    .bind(&next)
    .bind(&errors)
    .bind(&first)
    .execute(&mut **tx)
    .await
    .map_err(err("parking events"))?;
    Ok(())
}

/// Raises each shipment's newest event time; a time never moves back.
async fn raise_newest(
    tx: &mut Transaction<'_, Postgres>,
    newest: &[(ShipmentId, OffsetDateTime)],
) -> Result<(), LedgerError> {
    // One row per shipment (ON CONFLICT cannot touch a row twice per statement).
    let mut latest: HashMap<&str, OffsetDateTime> = HashMap::with_capacity(newest.len());
    for (s, t) in newest {
        let slot = latest.entry(s.as_str()).or_insert(*t);
        *slot = (*slot).max(*t);
    }
    if latest.is_empty() {
        return Ok(());
    }
    let shipments: Vec<&str> = latest.keys().copied().collect();
    let times: Vec<OffsetDateTime> = latest.values().copied().collect();
    sqlx::query(
        "INSERT INTO shipment_newest (shipment_id, event_time)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[])
         ON CONFLICT (shipment_id) DO UPDATE
            SET event_time = EXCLUDED.event_time, updated_at = now()
            WHERE EXCLUDED.event_time > shipment_newest.event_time",
    )
    .bind(&shipments)
    .bind(&times)
    .execute(&mut **tx)
    .await
    .map_err(err("writing newest event times"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::copy_text;

    #[test]
    fn copy_text_escapes_what_copy_would_misread() {
        let mut buf = String::new();
        copy_text(&mut buf, Some("a\tb\nc\\d\re\0"));
        copy_text(&mut buf, None);
        assert_eq!(buf, "a\\tb\\nc\\\\d\\re\t\\N\t");
    }
}
