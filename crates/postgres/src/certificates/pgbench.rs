//! One operation as a pgbench script: the transaction the unit of work runs (`unit`),
//! statement for statement, with pgbench expressions in place of the bound parameters, so a
//! baseline replays exactly the service's SQL without a copy of it.

use super::rows;
use super::sql::{LOAD_SQL, LOCK_BY_CODE_SQL, LOCK_SQL, WRITE_SQL};
use backbone_certificates::store::{SavedOperation, StoreError};

/// pgbench expressions (usually variables, `:name`) for the parameters of one operation; the
/// script casts each to the type the unit of work binds it as.
///
/// The script sets variables of its own: after the row lock the certificate's id is `:k_id`,
/// after the load the loaded row's columns are `:l_<column>` (`:l_balance`, `:l_state`, ...),
/// which `after_load` and the write's expressions may use. The sale links are written back as
/// loaded, so an operation that changes them (an activation) cannot be replayed this way.
pub struct Operation<'a> {
    /// Key of the transaction-level advisory lock on the idempotency key (`bigint`).
    pub lock_key: &'a str,
    /// Digest of the certificate's code (`bytea`).
    pub code_digest: &'a str,
    pub channel: &'a str,
    /// The hold or capture the command names (`''` for none).
    pub target: &'a str,
    pub operation: &'a str,
    pub idempotency_key: &'a str,
    /// pgbench meta-commands run between the load and the write, each ending in a newline.
    pub after_load: &'a str,
    pub balance: &'a str,
    pub held: &'a str,
    pub state: &'a str,
    /// The texts of [`WriteJson`].
    pub holds: &'a str,
    pub operations: &'a str,
    pub events: &'a str,
    pub result: &'a str,
    pub initiator: &'a str,
    pub source_event: &'a str,
    pub request_hash: &'a str,
    pub retention_seconds: &'a str,
}

/// A statement that names a parameter the script has no value for.
#[derive(Debug, thiserror::Error)]
#[error("pgbench script: {0}")]
pub struct ScriptError(String);

/// The JSON parameters of the write as the unit of work binds them for an operation: the holds
/// it changed, its operation rows, its outgoing events, its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteJson {
    pub holds: String,
    pub operations: String,
    pub events: String,
    pub result: String,
}

pub fn write_json(op: &SavedOperation<'_>) -> Result<WriteJson, StoreError> {
    let [holds, operations, events, result] = rows::write_json(op)?;
    Ok(WriteJson {
        holds: holds.to_string(),
        operations: operations.to_string(),
        events: events.to_string(),
        result: result.to_string(),
    })
}

/// BEGIN, the idempotency key's lock, the row lock (by code), the load, the write, COMMIT.
pub fn operation_script(op: &Operation<'_>) -> Result<String, ScriptError> {
    let mut s = String::from("BEGIN;\n");
    s.push_str(&bind(LOCK_SQL, &[cast(op.lock_key, "int8")])?);
    s.push_str(";\n");
    s.push_str(&bind(LOCK_BY_CODE_SQL, &[cast(op.code_digest, "bytea")])?);
    s.push_str("\n\\gset k_\n");
    s.push_str(&bind(
        LOAD_SQL,
        &[
            ":k_id::uuid".into(),
            cast(op.target, "text"),
            cast(op.operation, "text"),
            cast(op.channel, "text"),
            cast(op.idempotency_key, "text"),
        ],
    )?);
    s.push_str("\n\\gset l_\n");
    s.push_str(op.after_load);
    s.push_str(&bind(WRITE_SQL, &write_parameters(op))?);
    s.push_str(";\nCOMMIT;\n");
    Ok(s)
}

fn cast(expression: &str, ty: &str) -> String {
    format!("{expression}::{ty}")
}

/// `WRITE_SQL`'s parameters, in the order and with the types `PgUnit::save` binds them.
fn write_parameters(op: &Operation<'_>) -> [String; 18] {
    [
        ":l_id::uuid".into(),
        cast(op.balance, "int8"),
        cast(op.held, "int8"),
        cast(op.state, "text"),
        ":l_client_id::text".into(),
        ":l_order_id::text".into(),
        ":l_payment_id::text".into(),
        ":l_version::int8".into(),
        cast(op.holds, "jsonb"),
        cast(op.operations, "jsonb"),
        cast(op.channel, "text"),
        cast(op.initiator, "text"),
        cast(op.source_event, "text"),
        cast(op.events, "jsonb"),
        cast(op.idempotency_key, "text"),
        cast(op.request_hash, "bytea"),
        cast(op.result, "jsonb"),
        cast(op.retention_seconds, "float8"),
    ]
}

/// Replaces the `$n` parameters of `sql` by `args[n - 1]`.
fn bind(sql: &str, args: &[String]) -> Result<String, ScriptError> {
    let mut out = String::with_capacity(sql.len() + 256);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.next_if(char::is_ascii_digit) {
            digits.push(d);
        }
        let n: usize = digits
            .parse()
            .map_err(|_| ScriptError("a `$` without a parameter number".into()))?;
        let arg = n
            .checked_sub(1)
            .and_then(|i| args.get(i))
            .ok_or_else(|| ScriptError(format!("parameter ${n} has no value")))?;
        out.push_str(arg);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_replaced_longest_number_first() -> Result<(), ScriptError> {
        let args: Vec<String> = (1..=12).map(|n| format!(":p{n}")).collect();
        assert_eq!(bind("f($1, $12, $2)", &args)?, "f(:p1, :p12, :p2)");
        assert!(bind("f($13)", &args).is_err());
        assert!(bind("f($)", &args).is_err());
        Ok(())
    }

    /// An authorize and the capture of its hold, with the variables of the certificates
    /// benchmark's script.
    fn pair() -> Result<String, ScriptError> {
        let authorize = operation_script(&Operation {
            lock_key: ":lka1",
            code_digest: ":d",
            channel: ":chan",
            target: ":nil",
            operation: ":a1",
            idempotency_key: ":ka1",
            after_load: "",
            balance: ":l_balance",
            held: ":amount",
            state: ":l_state",
            holds: ":ah1",
            operations: ":ao1",
            events: ":ae1",
            result: ":aa1",
            initiator: ":ini",
            source_event: ":sa1",
            request_hash: ":rh",
            retention_seconds: ":ret",
        })?;
        let capture = operation_script(&Operation {
            lock_key: ":lkc1",
            code_digest: ":d",
            channel: ":chan",
            target: ":a1",
            operation: ":c1",
            idempotency_key: ":kc1",
            after_load: "\\set nb :l_balance - :amount\n",
            balance: ":nb",
            held: ":zero",
            state: ":stc",
            holds: ":ch1",
            operations: ":co1",
            events: ":ce1",
            result: ":ca1",
            initiator: ":ini",
            source_event: ":sc1",
            request_hash: ":rh",
            retention_seconds: ":ret",
        })?;
        Ok(authorize + &capture)
    }

    #[test]
    fn an_authorize_and_its_capture_are_the_unit_of_works_statements() -> Result<(), ScriptError> {
        assert_eq!(pair()?, include_str!("testdata/authorize-capture.pgbench"));
        Ok(())
    }
}
