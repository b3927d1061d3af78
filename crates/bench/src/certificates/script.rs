//! The pgbench script of the baseline: one parameter query, then authorize + capture pairs, each
//! transaction exactly the service's; and the JSON parameter templates the query fills in.

use super::api::key;
use super::{AMOUNT_MINOR, INITIATOR};
use crate::gift::{CURRENCY, NOMINAL_MINOR};
use anyhow::Context;
use backbone_certificates::events::{self, Origin};
use backbone_certificates::{
    execute, Amount, Applied, Certificate, Command, Currency, OperationId, SaleLinks,
};
use backbone_postgres::certificates::{LOAD_SQL, LOCK_BY_CODE_SQL, LOCK_SQL, WRITE_SQL};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Operation ids and idempotency keys in the parameter templates, replaced per execution.
const AUTH_ID: &str = "aaaaaaaa-aaaa-7aaa-8aaa-aaaaaaaaaaaa";
const CAPTURE_ID: &str = "cccccccc-cccc-7ccc-8ccc-cccccccccccc";
const AUTH_KEY: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";
const CAPTURE_KEY: &str = "dddddddd-dddd-4ddd-8ddd-dddddddddddd";

/// The JSON parameters of `WRITE_SQL` for one authorize and its capture, built by the domain
/// code the service runs and serialised like the repository does (holds changed, operation rows,
/// outgoing events, the stored result).
pub(super) struct WriteTemplates {
    pub(super) auth: [String; 4],
    pub(super) capture: [String; 4],
}

fn hold_row(hold: &str, expires_at: OffsetDateTime, captured: Option<&str>) -> anyhow::Result<Value> {
    Ok(json!({
        "hold_id": hold,
        "amount": AMOUNT_MINOR,
        "expires_at": expires_at.format(&Rfc3339)?,
        "status": if captured.is_some() { "captured" } else { "active" },
        "captured_amount": captured.map(|_| AMOUNT_MINOR),
        "capture_id": captured,
        "capture_reversed": false,
        "channel": "POS",
    }))
}

fn write_params(
    id: uuid::Uuid,
    after: &Certificate,
    effects: Vec<backbone_certificates::Effect>,
    key: &str,
    holds: Value,
    now: OffsetDateTime,
) -> anyhow::Result<[String; 4]> {
    let ops: Vec<Value> = effects
        .iter()
        .map(|e| -> anyhow::Result<Value> {
            Ok(json!({
                "operation_id": e.operation.as_str(),
                "action": e.action.name(),
                "detail": serde_json::to_value(e)?,
                "amount": e.amount,
                "target_id": events::target_of(&e.action),
                "balance_before": e.balance_before,
                "balance_after": e.balance_after,
                "state_before": e.state_before.as_str(),
                "state_after": e.state_after.as_str(),
                "at": e.at.format(&Rfc3339)?,
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    let origin = Origin {
        channel: backbone_certificates::Channel::Pos,
        initiator: Some(INITIATOR.into()),
        source_event: Some(format!("http:{key}")),
    };
    let events: Vec<Value> = events::outgoing(id, "ABCD", after, &effects, &origin)
        .into_iter()
        .map(|o| json!({"topic": o.topic, "key": o.key, "payload": o.payload}))
        .collect();
    let applied = Applied {
        certificate_id: id,
        code_last4: "ABCD".into(),
        effects,
        state: after.state(),
        currency: after.currency().to_string(),
        balance: after.balance(),
        available: after.available(now),
        replayed: false,
        code_digest: None,
    };
    Ok([
        holds.to_string(),
        Value::Array(ops).to_string(),
        Value::Array(events).to_string(),
        serde_json::to_string(&applied)?,
    ])
}

pub(super) fn write_templates() -> anyhow::Result<WriteTemplates> {
    let now = OffsetDateTime::now_utc();
    let currency = Currency::parse(CURRENCY)?;
    let amount = Amount::new(AMOUNT_MINOR, currency)?;
    let id = uuid::Uuid::now_v7();
    let mut c = Certificate::issue(Amount::new(NOMINAL_MINOR, currency)?, None);
    let links = SaleLinks {
        client_id: Some("bench-client-0".into()),
        order_id: Some("bench-order-0".into()),
        payment_id: Some("bench-payment-0".into()),
    };
    execute(
        &mut c,
        OperationId::parse(key())?,
        &Command::Activate { links },
        now,
    )?;
    let hold = OperationId::parse(AUTH_ID)?;
    let ttl = 15 * 60;
    let effects = execute(
        &mut c,
        hold.clone(),
        &Command::Authorize {
            amount,
            ttl_seconds: ttl,
        },
        now,
    )?;
    let expires_at = now + time::Duration::seconds(ttl);
    let auth = write_params(
        id,
        &c,
        effects,
        AUTH_KEY,
        json!([hold_row(AUTH_ID, expires_at, None)?]),
        now,
    )?;
    let effects = execute(
        &mut c,
        OperationId::parse(CAPTURE_ID)?,
        &Command::Capture { hold, amount },
        now,
    )?;
    let capture = write_params(
        id,
        &c,
        effects,
        CAPTURE_KEY,
        json!([hold_row(AUTH_ID, expires_at, Some(CAPTURE_ID))?]),
        now,
    )?;
    Ok(WriteTemplates { auth, capture })
}

/// Replaces `$n` parameters of `sql` by `args[n - 1]` (pgbench variables with the type sqlx binds).
fn bind(sql: &str, args: &[String]) -> anyhow::Result<String> {
    let mut out = String::with_capacity(sql.len() + 256);
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some((_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        let n: usize = digits.parse().context("a `$` without a parameter number")?;
        let arg = n
            .checked_sub(1)
            .and_then(|i| args.get(i))
            .with_context(|| format!("parameter ${n} has no value"))?;
        out.push_str(arg);
    }
    Ok(out)
}

const TEMPLATE_COLUMNS: [&str; 8] = ["ah", "ao", "ae", "aa", "ch", "co", "ce", "ca"];

/// The pgbench script: one parameter query (the client's certificate, fresh operation ids and
/// keys, the JSON parameters with those ids), then `pairs` authorize + capture transactions, each
/// exactly the service's (`PgCertificates::apply`): BEGIN, LOCK_SQL (the idempotency key),
/// LOCK_BY_CODE_SQL (the row), LOAD_SQL, WRITE_SQL, COMMIT.
pub(super) fn pgbench_script(pairs: usize, per_client: usize) -> anyhow::Result<String> {
    let mut s = String::new();
    s.push_str(&format!("\\set slot random(0, {})\n", per_client - 1));
    s.push_str(&format!("\\set amount {AMOUNT_MINOR}\n\\set zero 0\n"));
    for p in 1..=pairs {
        s.push_str(&format!(
            "\\set lka{p} random(1, 9000000000000000000)\n\\set lkc{p} random(1, 9000000000000000000)\n"
        ));
    }
    let mut cols = vec![
        "c.digest AS d".to_owned(),
        "'POS' AS chan".into(),
        format!("'{INITIATOR}' AS ini"),
        "'' AS nil".into(),
        "t.request_hash AS rh".into(),
        "'PartiallyRedeemed' AS stc".into(),
        format!("{} AS ret", 24 * 7 * 3600),
    ];
    let mut ids = Vec::new();
    for p in 1..=pairs {
        for v in ["a", "c", "ka", "kc"] {
            ids.push(format!("gen_random_uuid()::text AS {v}{p}"));
        }
        cols.push(format!("'http:' || x.ka{p} AS sa{p}"));
        cols.push(format!("'http:' || x.kc{p} AS sc{p}"));
        for t in TEMPLATE_COLUMNS {
            cols.push(format!(
                "replace(replace(replace(replace(t.{t}, '{AUTH_ID}', x.a{p}), '{CAPTURE_ID}', x.c{p}), \
                 '{AUTH_KEY}', x.ka{p}), '{CAPTURE_KEY}', x.kc{p}) AS {t}{p}"
            ));
        }
        for v in ["a", "c", "ka", "kc"] {
            cols.push(format!("x.{v}{p}"));
        }
    }
    s.push_str(&format!(
        "SELECT {}\n  FROM bench_pgbench_cert c, bench_pgbench_template t,\n       LATERAL (SELECT {}) x\n WHERE c.client = :client_id AND c.slot = :slot\n\\gset\n",
        cols.join(",\n       "),
        ids.join(", ")
    ));
    for p in 1..=pairs {
        // Authorize: no target ($2 of LOAD_SQL), a new hold.
        transaction(
            &mut s,
            &format!(":lka{p}"),
            [":nil".into(), format!(":a{p}"), format!(":ka{p}")],
            "",
            &write_args(p, "a", ":l_balance", ":amount", ":l_state"),
        )?;
        // Capture of that hold.
        transaction(
            &mut s,
            &format!(":lkc{p}"),
            [format!(":a{p}"), format!(":c{p}"), format!(":kc{p}")],
            "\\set nb :l_balance - :amount\n",
            &write_args(p, "c", ":nb", ":zero", ":stc"),
        )?;
    }
    Ok(s)
}

/// One operation as `PgCertificates::apply` runs it. `load` holds LOAD_SQL's target, operation
/// id and idempotency key; `between` runs after the load (pgbench arithmetic for the write).
fn transaction(
    s: &mut String,
    lock_key: &str,
    load: [String; 3],
    between: &str,
    write: &[String],
) -> anyhow::Result<()> {
    let [target, operation, key] = load;
    s.push_str("BEGIN;\n");
    s.push_str(&bind(LOCK_SQL, &[format!("{lock_key}::int8")])?);
    s.push_str(";\n");
    s.push_str(&bind(LOCK_BY_CODE_SQL, &[":d::bytea".into()])?);
    s.push_str("\n\\gset k_\n");
    s.push_str(&bind(
        LOAD_SQL,
        &[
            ":k_id::uuid".into(),
            format!("{target}::text"),
            format!("{operation}::text"),
            ":chan::text".into(),
            format!("{key}::text"),
        ],
    )?);
    s.push_str("\n\\gset l_\n");
    s.push_str(between);
    s.push_str(&bind(WRITE_SQL, write)?);
    s.push_str(";\nCOMMIT;\n");
    Ok(())
}

/// `WRITE_SQL`'s 18 parameters, with the types sqlx binds them as.
fn write_args(p: usize, op: &str, balance: &str, held: &str, state: &str) -> Vec<String> {
    let source = if op == "a" { "sa" } else { "sc" };
    vec![
        ":l_id::uuid".into(),
        format!("{balance}::int8"),
        format!("{held}::int8"),
        format!("{state}::text"),
        ":l_client_id::text".into(),
        ":l_order_id::text".into(),
        ":l_payment_id::text".into(),
        ":l_version::int8".into(),
        format!(":{op}h{p}::jsonb"),
        format!(":{op}o{p}::jsonb"),
        ":chan::text".into(),
        ":ini::text".into(),
        format!(":{source}{p}::text"),
        format!(":{op}e{p}::jsonb"),
        format!(":k{op}{p}::text"),
        ":rh::bytea".into(),
        format!(":{op}a{p}::jsonb"),
        ":ret::float8".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_replaced_longest_number_first() -> anyhow::Result<()> {
        let args: Vec<String> = (1..=12).map(|n| format!(":p{n}")).collect();
        assert_eq!(bind("f($1, $12, $2)", &args)?, "f(:p1, :p12, :p2)");
        assert!(bind("f($13)", &args).is_err());
        Ok(())
    }

    #[test]
    fn the_script_binds_every_parameter() -> anyhow::Result<()> {
        let script = pgbench_script(2, 8)?;
        assert!(!script.contains('$'));
        assert_eq!(script.matches("BEGIN;").count(), 4);
        assert_eq!(script.matches("FOR UPDATE").count(), 4);
        Ok(())
    }

    #[test]
    fn templates_hold_the_placeholders() -> anyhow::Result<()> {
        let t = write_templates()?;
        assert!(t.auth[0].contains(AUTH_ID) && t.auth[1].contains(AUTH_ID));
        assert!(t.capture[0].contains(CAPTURE_ID) && t.capture[3].contains(CAPTURE_ID));
        Ok(())
    }
}
