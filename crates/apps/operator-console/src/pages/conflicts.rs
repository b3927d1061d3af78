//! Conflicts: the two-way sync's operator tasks and their resolution.

use super::*;

struct TaskRow {
    id: i64,
    client_id: String,
    field: String,
    ours: String,
    theirs: String,
    created_at: String,
    state: String,
}

fn task_row(t: &Task) -> TaskRow {
    TaskRow {
        id: t.id,
        client_id: t.client_id.clone(),
        field: t.field.clone(),
        ours: views::cell(&t.ours),
        theirs: views::cell(&t.theirs),
        created_at: when(&t.created_at),
        state: t.state.clone(),
    }
}

#[derive(Template)]
#[template(path = "conflicts.html")]
struct ConflictsPage {
    nav: Nav,
    state: String,
    enabled: bool,
    tasks: Vec<TaskRow>,
    error: Option<String>,
}

pub async fn conflicts(State(c): St, headers: HeaderMap, Query(q): Query<StateQuery>) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    let state = match q.state.as_deref() {
        Some("resolved") => "resolved",
        _ => "open",
    };
    let enabled = c.backends.has_two_way();
    let (tasks, error) = if enabled {
        match c.backends.tasks::<TaskList>(state).await {
            Ok(l) => (l.tasks.iter().map(task_row).collect(), None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        }
    } else {
        (Vec::new(), None)
    };
    Ok(render(&ConflictsPage {
        nav: Nav::of(&s, "conflicts"),
        state: state.to_owned(),
        enabled,
        tasks,
        error,
    }))
}

#[derive(Template)]
#[template(path = "conflict.html")]
struct ConflictPage {
    nav: Nav,
    task: TaskRow,
    reason: String,
    ours_at: String,
    ours_source: String,
    theirs_at: String,
    theirs_source: String,
    resolution: String,
    resolved_by: String,
    resolved_at: String,
    open: bool,
    flag: bool,
    idempotency_key: String,
    notice: Option<String>,
}

async fn conflict_page(c: &Console, s: &Session, id: i64, notice: Option<String>) -> Response {
    match c.backends.task::<Task>(id).await {
        Ok(t) => render(&ConflictPage {
            nav: Nav::of(s, "conflicts"),
            reason: t.reason.clone(),
            ours_at: opt_when(t.ours_at.as_ref()),
            ours_source: t.ours_source.clone().unwrap_or_else(|| "—".into()),
            theirs_at: opt_when(t.theirs_at.as_ref()),
            theirs_source: t.theirs_source.clone(),
            resolution: t.resolution.as_ref().map_or_else(|| "—".to_owned(), views::cell),
            resolved_by: t.resolved_by.clone().unwrap_or_else(|| "—".into()),
            resolved_at: opt_when(t.resolved_at.as_ref()),
            open: t.state == "open",
            flag: t.ours.is_boolean() || t.theirs.is_boolean(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            task: task_row(&t),
            notice,
        }),
        Err(e) => message(s, "conflicts", "Conflict", &e.to_string(), status_of(&e)),
    }
}

pub async fn conflict(State(c): St, headers: HeaderMap, Path(id): Path<i64>) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    Ok(conflict_page(&c, &s, id, None).await)
}

pub async fn resolve(State(c): St, headers: HeaderMap, Path(id): Path<i64>, body: Bytes) -> Page {
    let form = Form::parse(&body);
    let s = c.require_form(&headers, &form, Role::Operator)?;
    let choice = form.text("choice");
    let mut request = json!({"choice": choice, "by": s.user});
    if choice == "value" {
        let raw = form.text("value");
        request["value"] = match (form.get("flag"), raw.as_str()) {
            (_, "") => Value::Null,
            (Some("1"), "true" | "yes") => Value::Bool(true),
            (Some("1"), "false" | "no") => Value::Bool(false),
            _ => Value::String(raw),
        };
    }
    let key = form.text("idempotency_key");
    let key = if key.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        key
    };
    let result = c.backends.resolve::<Task>(id, &request, &key).await;
    record(
        &c,
        &s,
        "conflict.resolve",
        format!("task {id}: {choice}"),
        outcome_of(&result),
    );
    match result {
        Ok(_) => Ok(Redirect::to(&format!("/conflicts/{id}")).into_response()),
        Err(e) => Ok(conflict_page(&c, &s, id, Some(e.to_string())).await),
    }
}
