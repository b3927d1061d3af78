//! The pgbench script of the baseline: one parameter query, then authorize + capture pairs, each
//! transaction the service's as `backbone_postgres::certificates::pgbench` writes it out; and the
//! JSON parameter templates the query fills in.

use super::api::key;
use super::{AMOUNT_MINOR, INITIATOR};
use crate::gift::{CURRENCY, NOMINAL_MINOR};
use backbone_certificates::events::{self, Origin};
use backbone_certificates::store::{LockedCertificate, SavedOperation};
use backbone_certificates::{
    execute, Amount, Applied, Certificate, CodeDigest, Command, Currency, OperationId, SaleLinks,
};
use backbone_postgres::certificates::pgbench::{
    operation_script, write_json, Operation, ScriptError, WriteJson,
};
use time::OffsetDateTime;

/// Operation ids and idempotency keys in the parameter templates, replaced per execution.
const AUTH_ID: &str = "aaaaaaaa-aaaa-7aaa-8aaa-aaaaaaaaaaaa";
const CAPTURE_ID: &str = "cccccccc-cccc-7ccc-8ccc-cccccccccccc";
const AUTH_KEY: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";
const CAPTURE_KEY: &str = "dddddddd-dddd-4ddd-8ddd-dddddddddddd";

/// The JSON parameters of the write for one authorize and its capture, built by the domain code
/// the service runs and serialised by the repository's row code.
pub(super) struct WriteTemplates {
    pub(super) auth: WriteJson,
    pub(super) capture: WriteJson,
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
        &Command::Activate { links, price: None },
        now,
    )?;
    let hold = OperationId::parse(AUTH_ID)?;
    let authorize = Command::Authorize {
        amount,
        ttl_seconds: 15 * 60,
    };
    let (auth, c) = template(id, c, hold.clone(), &authorize, AUTH_KEY, now)?;
    let capture = Command::Capture { hold, amount };
    let (capture, _) = template(id, c, OperationId::parse(CAPTURE_ID)?, &capture, CAPTURE_KEY, now)?;
    Ok(WriteTemplates { auth, capture })
}

/// `command` on the certificate as the unit of work loads it: the write's JSON parameters, and
/// the certificate after it.
fn template(
    id: uuid::Uuid,
    before: Certificate,
    operation: OperationId,
    command: &Command,
    key: &str,
    now: OffsetDateTime,
) -> anyhow::Result<(WriteJson, Certificate)> {
    let locked = LockedCertificate {
        id,
        code_digest: CodeDigest([0; 32]),
        code_last4: "ABCD".into(),
        version: 0,
        cvc_verifier: Vec::new(),
        hold_channels: before
            .holds()
            .keys()
            .map(|h| (h.clone(), "POS".to_owned()))
            .collect(),
        certificate: before,
        stored: None,
    };
    let mut after = locked.certificate.clone();
    let effects = execute(&mut after, operation, command, now)?;
    let origin = Origin {
        channel: backbone_certificates::Channel::Pos,
        initiator: Some(INITIATOR.into()),
        source_event: Some(format!("http:{key}")),
    };
    let events = events::outgoing(id, &locked.code_last4, &after, &effects, &origin);
    let applied = Applied {
        certificate_id: id,
        code_last4: locked.code_last4.clone(),
        effects,
        state: after.state(),
        currency: after.currency().to_string(),
        balance: after.balance(),
        available: after.available(now),
        replayed: false,
        code_digest: None,
    };
    let json = write_json(&SavedOperation {
        locked: &locked,
        after: &after,
        applied: &applied,
        origin: &origin,
        idempotency: None,
        events: &events,
    })?;
    Ok((json, after))
}

const TEMPLATE_COLUMNS: [&str; 8] = ["ah", "ao", "ae", "aa", "ch", "co", "ce", "ca"];

/// The pgbench script: one parameter query (the client's certificate, fresh operation ids and
/// keys, the JSON parameters with those ids), then `pairs` authorize + capture transactions, each
/// exactly the service's.
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
        s.push_str(&pair(p)?);
    }
    Ok(s)
}

/// Pair `p`'s authorize (no target, a new hold) and the capture of that hold, in the variables
/// of the parameter query.
fn pair(p: usize) -> Result<String, ScriptError> {
    let v = |name: &str| format!(":{name}{p}");
    let authorize = operation_script(&Operation {
        lock_key: &v("lka"),
        code_digest: ":d",
        channel: ":chan",
        target: ":nil",
        operation: &v("a"),
        idempotency_key: &v("ka"),
        after_load: "",
        balance: ":l_balance",
        held: ":amount",
        state: ":l_state",
        holds: &v("ah"),
        operations: &v("ao"),
        events: &v("ae"),
        result: &v("aa"),
        initiator: ":ini",
        source_event: &v("sa"),
        request_hash: ":rh",
        retention_seconds: ":ret",
    })?;
    let capture = operation_script(&Operation {
        lock_key: &v("lkc"),
        code_digest: ":d",
        channel: ":chan",
        target: &v("a"),
        operation: &v("c"),
        idempotency_key: &v("kc"),
        after_load: "\\set nb :l_balance - :amount\n",
        balance: ":nb",
        held: ":zero",
        state: ":stc",
        holds: &v("ch"),
        operations: &v("co"),
        events: &v("ce"),
        result: &v("ca"),
        initiator: ":ini",
        source_event: &v("sc"),
        request_hash: ":rh",
        retention_seconds: ":ret",
    })?;
    Ok(authorize + &capture)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(t.auth.holds.contains(AUTH_ID) && t.auth.operations.contains(AUTH_ID));
        assert!(t.capture.holds.contains(CAPTURE_ID) && t.capture.result.contains(CAPTURE_ID));
        Ok(())
    }
}
