//! Uploads, SMS deliveries and the console's own activity.

use super::*;

#[derive(Template)]
#[template(path = "table.html")]
struct TablePage {
    nav: Nav,
    title: String,
    intro: String,
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
    error: Option<String>,
    notice: Option<String>,
    requeue: bool,
}

pub async fn uploads(State(c): St, headers: HeaderMap) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    let (columns, rows, error) = match c.backends.uploads::<Uploads>().await {
        Ok(u) => {
            let (cols, rows) = views::table(&u.uploads);
            (cols, rows, None)
        }
        Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
    };
    Ok(render(&TablePage {
        nav: Nav::of(&s, "uploads"),
        title: "Batch uploads".into(),
        intro: "The latest batches of pre-generated certificate codes, newest first.".into(),
        columns,
        rows,
        error,
        notice: None,
        requeue: false,
    }))
}

async fn sms_page(c: &Console, s: &Session, state: &str, notice: Option<String>) -> Response {
    let (columns, rows, error) = match c.backends.sms::<SmsList>(state).await {
        Ok(l) => {
            let (cols, rows) = views::table(&l.deliveries);
            (cols, rows, None)
        }
        Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
    };
    render(&TablePage {
        nav: Nav::of(s, "sms"),
        title: format!("SMS deliveries: {state}"),
        intro: "CVC deliveries by SMS; certificate codes and phone numbers are masked.".into(),
        columns,
        rows,
        error,
        notice,
        requeue: state == "failed" && s.role >= Role::Operator,
    })
}

pub async fn sms(State(c): St, headers: HeaderMap, Query(q): Query<StateQuery>) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    let state = if q.state.as_deref() == Some("pending") {
        "pending"
    } else {
        "failed"
    };
    Ok(sms_page(&c, &s, state, None).await)
}

pub async fn sms_requeue(State(c): St, headers: HeaderMap, body: Bytes) -> Page {
    let form = Form::parse(&body);
    let s = c.require_form(&headers, &form, Role::Operator)?;
    let dry_run = form.get("confirm") != Some("yes");
    let result = c.backends.sms_requeue::<Requeued>(dry_run, &s.user).await;
    let notice = match &result {
        Ok(r) if r.dry_run => format!(
            "Dry run: {} failed deliveries would be queued again. Press “Requeue” again with confirm to send.",
            r.matched
        ),
        Ok(r) => format!("{} deliveries queued again.", r.requeued),
        Err(e) => e.to_string(),
    };
    record(
        &c,
        &s,
        "sms.requeue",
        String::new(),
        if dry_run {
            "dry run".to_owned()
        } else {
            outcome_of(&result)
        },
    );
    Ok(sms_page(&c, &s, "failed", Some(notice)).await)
}

struct ActivityRow {
    at: String,
    user: String,
    role: &'static str,
    action: &'static str,
    target: String,
    outcome: String,
}

#[derive(Template)]
#[template(path = "activity.html")]
struct ActivityPage {
    nav: Nav,
    rows: Vec<ActivityRow>,
}

pub async fn activity(State(c): St, headers: HeaderMap) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    let rows = c
        .audit
        .latest()
        .into_iter()
        .map(|e| ActivityRow {
            at: e.at.format(&f).unwrap_or_default(),
            user: e.user,
            role: e.role,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
        })
        .collect();
    Ok(render(&ActivityPage {
        nav: Nav::of(&s, "activity"),
        rows,
    }))
}
