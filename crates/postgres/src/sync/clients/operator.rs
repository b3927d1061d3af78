//! Operator tasks and `crm_conflict_log`: a conflict a person decides is opened once per client
//! and field; its resolution sets our card (source `operator`), queues it for the CRM as forced,
//! closes the task and is audited, in one transaction.

use super::{cards, claim, corrupt, empty_card, err, keep_answer, lock_outbox, read_card, write_card};
use backbone_sync::clients::apply;
use backbone_sync::clients::merge::{Conflict, Resolution};
use backbone_sync::clients::model::{ClientId, Field, Source, Stamp, Value};
use backbone_sync::clients::ports::*;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row};
use time::OffsetDateTime;

const TASK_COLUMNS: &str =
    "id, client_id, field, ours, ours_at, ours_source, theirs, theirs_at, theirs_source,
    reason, state, created_at, resolution, resolved_by, resolved_at";

fn source(raw: Option<String>) -> Result<Option<Source>, StoreError> {
    raw.map(|s| Source::parse(&s).ok_or_else(|| corrupt("source")))
        .transpose()
}

fn task_of(row: &PgRow) -> Result<OperatorTask, StoreError> {
    let decode = |e: sqlx::Error| err("reading an operator task")(e);
    let field: String = row.try_get("field").map_err(decode)?;
    let state: String = row.try_get("state").map_err(decode)?;
    Ok(OperatorTask {
        id: row.try_get("id").map_err(decode)?,
        client_id: ClientId::parse(row.try_get::<String, _>("client_id").map_err(decode)?)
            .map_err(|_| corrupt("client id"))?,
        field: Field::parse(&field).ok_or_else(|| corrupt("field"))?,
        ours: row.try_get::<Json<Value>, _>("ours").map_err(decode)?.0,
        ours_at: row.try_get("ours_at").map_err(decode)?,
        ours_source: source(row.try_get("ours_source").map_err(decode)?)?,
        theirs: row.try_get::<Json<Value>, _>("theirs").map_err(decode)?.0,
        theirs_at: row.try_get("theirs_at").map_err(decode)?,
        theirs_source: source(row.try_get("theirs_source").map_err(decode)?)?
            .ok_or_else(|| corrupt("source"))?,
        reason: row.try_get("reason").map_err(decode)?,
        state: match state.as_str() {
            "open" => OperatorTaskState::Open,
            "resolved" => OperatorTaskState::Resolved,
            _ => return Err(corrupt("task state")),
        },
        created_at: row.try_get("created_at").map_err(decode)?,
        resolution: row
            .try_get::<Option<Json<Value>>, _>("resolution")
            .map_err(decode)?
            .map(|j| j.0),
        resolved_by: row.try_get("resolved_by").map_err(decode)?,
        resolved_at: row.try_get("resolved_at").map_err(decode)?,
    })
}

fn state_name(state: OperatorTaskState) -> &'static str {
    match state {
        OperatorTaskState::Open => "open",
        OperatorTaskState::Resolved => "resolved",
    }
}

pub(super) async fn list(
    pool: &PgPool,
    state: Option<OperatorTaskState>,
    limit: i64,
) -> Result<Vec<OperatorTask>, StoreError> {
    sqlx::query(&format!(
        "SELECT {TASK_COLUMNS} FROM operator_task WHERE $1::text IS NULL OR state = $1 ORDER BY id LIMIT $2"
    ))
    .bind(state.map(state_name))
    .bind(limit.max(0))
    .fetch_all(pool)
    .await
    .map_err(err("reading operator tasks"))?
    .iter()
    .map(task_of)
    .collect()
}

/// The task; `lock` takes its row until the transaction ends.
pub(super) async fn read(
    connection: &mut PgConnection,
    id: i64,
    lock: bool,
) -> Result<Option<OperatorTask>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query(&format!(
        "SELECT {TASK_COLUMNS} FROM operator_task WHERE id = $1{lock}"
    ))
    .bind(id)
    .fetch_optional(connection)
    .await
    .map_err(err("reading an operator task"))?
    .as_ref()
    .map(task_of)
    .transpose()
}

/// Fields with an open task for the client.
pub(super) async fn pending(
    connection: &mut PgConnection,
    client: &ClientId,
) -> Result<std::collections::BTreeSet<Field>, StoreError> {
    let fields: Vec<String> =
        sqlx::query_scalar("SELECT field FROM operator_task WHERE client_id = $1 AND state = 'open'")
            .bind(client.as_str())
            .fetch_all(connection)
            .await
            .map_err(err("reading operator tasks"))?;
    fields
        .iter()
        .map(|f| Field::parse(f).ok_or_else(|| corrupt("field")))
        .collect()
}

/// Logs a conflict; one a person decides opens a task unless one is open for the client and
/// field. Returns the task's id.
pub(super) async fn record_conflict(
    connection: &mut PgConnection,
    client: &ClientId,
    conflict: &Conflict,
    request_id: &str,
) -> Result<Option<i64>, StoreError> {
    let mut task = None;
    if conflict.resolution == Resolution::OperatorTask {
        let opened: Option<i64> = sqlx::query_scalar(
            "INSERT INTO operator_task (client_id, field, ours, ours_at, ours_source, theirs, theirs_at,
                 theirs_source, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (client_id, field) WHERE state = 'open' DO NOTHING
             RETURNING id",
        )
        .bind(client.as_str())
        .bind(conflict.field.as_str())
        .bind(Json(&conflict.ours))
        .bind(conflict.ours_at)
        .bind(conflict.ours_source.map(Source::as_str))
        .bind(Json(&conflict.theirs))
        .bind(conflict.theirs_at)
        .bind(Source::Crm.as_str())
        .bind(&conflict.reason)
        .fetch_optional(&mut *connection)
        .await
        .map_err(err("opening an operator task"))?;
        task = match opened {
            Some(id) => Some(id),
            None => sqlx::query_scalar(
                "SELECT id FROM operator_task WHERE client_id = $1 AND field = $2 AND state = 'open'",
            )
            .bind(client.as_str())
            .bind(conflict.field.as_str())
            .fetch_optional(&mut *connection)
            .await
            .map_err(err("reading operator tasks"))?,
        };
    }
    log(
        connection,
        &Logged {
            client,
            field: conflict.field,
            ours: &conflict.ours,
            ours_at: conflict.ours_at,
            ours_source: conflict.ours_source,
            theirs: &conflict.theirs,
            theirs_at: conflict.theirs_at,
            rule: conflict.rule.as_str(),
            resolution: conflict.resolution.as_str(),
            reason: &conflict.reason,
            operator_task: task,
            chosen: None,
            decided_by: None,
            request_id,
        },
    )
    .await?;
    Ok(task)
}

/// One `crm_conflict_log` row.
struct Logged<'a> {
    client: &'a ClientId,
    field: Field,
    ours: &'a Value,
    ours_at: Option<OffsetDateTime>,
    ours_source: Option<Source>,
    theirs: &'a Value,
    theirs_at: Option<OffsetDateTime>,
    rule: &'a str,
    resolution: &'a str,
    reason: &'a str,
    operator_task: Option<i64>,
    chosen: Option<&'a Value>,
    decided_by: Option<&'a str>,
    request_id: &'a str,
}

async fn log(connection: &mut PgConnection, row: &Logged<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO crm_conflict_log (client_id, field, ours, ours_at, ours_source, theirs, theirs_at, rule,
             resolution, reason, operator_task_id, chosen, decided_by, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(row.client.as_str())
    .bind(row.field.as_str())
    .bind(Json(row.ours))
    .bind(row.ours_at)
    .bind(row.ours_source.map(Source::as_str))
    .bind(Json(row.theirs))
    .bind(row.theirs_at)
    .bind(row.rule)
    .bind(row.resolution)
    .bind(row.reason)
    .bind(row.operator_task)
    .bind(row.chosen.map(Json))
    .bind(row.decided_by)
    .bind(row.request_id)
    .execute(connection)
    .await
    .map_err(err("writing the conflict log"))?;
    Ok(())
}

pub(super) async fn resolve(
    pool: &PgPool,
    id: i64,
    choice: &Choice,
    by: &str,
    request_id: &str,
    idempotency: Option<&IdempotencyClaim>,
) -> Result<Idempotent<OperatorTask>, StoreError> {
    let mut tx = pool.begin().await.map_err(err("begin"))?;
    if let Some(done) = claim(&mut tx, idempotency).await? {
        return Ok(done);
    }
    // The client's outbox lock before the task's row, the order every card writer keeps.
    let client = read(&mut tx, id, false)
        .await?
        .ok_or(StoreError::OperatorTaskNotFound)?
        .client_id;
    lock_outbox(&mut tx, client.as_str()).await?;
    let mut task = read(&mut tx, id, true)
        .await?
        .ok_or(StoreError::OperatorTaskNotFound)?;
    if task.state != OperatorTaskState::Open {
        return Err(StoreError::OperatorTaskResolved);
    }
    let value = apply::chosen_value(&task, choice).map_err(StoreError::InvalidValue)?;
    let now = apply::now();
    let current = read_card(&mut tx, &client).await?;
    let created = current.is_none();
    let mut card = current.unwrap_or_else(|| empty_card(&client, now));
    card.card.set(task.field, value.clone());
    card.stamps.insert(
        task.field,
        Stamp {
            at: now,
            source: Source::Operator,
        },
    );
    card.version += 1;
    card.updated_at = now;
    write_card(&mut tx, &card, created).await?;
    cards::queue_card(
        &mut tx,
        &card,
        vec![task.field],
        vec![task.field],
        Source::Operator,
        request_id,
        now,
    )
    .await?;
    sqlx::query(
        "UPDATE operator_task SET state = 'resolved', resolution = $2, resolved_by = $3, resolved_at = $4
         WHERE id = $1",
    )
    .bind(id)
    .bind(Json(&value))
    .bind(by)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(err("closing an operator task"))?;
    task.state = OperatorTaskState::Resolved;
    task.resolution = Some(value.clone());
    task.resolved_by = Some(by.to_owned());
    task.resolved_at = Some(now);
    log(
        &mut tx,
        &Logged {
            client: &client,
            field: task.field,
            ours: &task.ours,
            ours_at: task.ours_at,
            ours_source: task.ours_source,
            theirs: &task.theirs,
            theirs_at: task.theirs_at,
            rule: apply::RULE_OPERATOR,
            resolution: apply::resolution_name(choice),
            reason: &task.reason,
            operator_task: Some(id),
            chosen: Some(&value),
            decided_by: Some(by),
            request_id,
        },
    )
    .await?;
    let answer = keep_answer(&mut tx, idempotency, task).await?;
    tx.commit().await.map_err(err("commit"))?;
    Ok(answer)
}
