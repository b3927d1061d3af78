//! The statements of one operation, as the unit of work runs them (and [`super::pgbench`]
//! writes them out for a baseline).

/// Serialises concurrent requests with the same idempotency key; `false` = in flight elsewhere.
pub(crate) const LOCK_SQL: &str = "SELECT pg_try_advisory_xact_lock($1)";

/// Locks the certificate's row; a concurrent operation on it waits here.
pub(crate) const LOCK_BY_CODE_SQL: &str = "SELECT id FROM gift_certificate WHERE code_digest = $1 FOR UPDATE";
pub(crate) const LOCK_BY_ID_SQL: &str = "SELECT id FROM gift_certificate WHERE id = $1 FOR UPDATE";

/// Loads the locked certificate with its active holds, the hold or capture `$2` names, an
/// earlier effect under operation id `$3`, and the idempotency record (`$4`, `$5`). A statement
/// of its own, after the lock: under READ COMMITTED it then reads what the transaction it
/// waited for committed (a lock and a read in one statement would read the holds as of before
/// the wait).
pub(crate) const LOAD_SQL: &str =
    "SELECT c.id, c.code_digest, c.code_last4, c.currency, c.nominal, c.balance, c.state, c.expires_at,
       c.client_id, c.order_id, c.payment_id, c.cvc_verifier, c.version,
       (SELECT coalesce(jsonb_agg(to_jsonb(h)), '[]'::jsonb) FROM gift_certificate_hold h
         WHERE h.certificate_id = c.id AND (h.status = 'active' OR h.hold_id = $2 OR h.capture_id = $2)) AS holds,
       (SELECT o.detail FROM gift_certificate_operation o
         WHERE o.certificate_id = c.id AND o.operation_id = $3) AS applied,
       (SELECT jsonb_build_object('hash', encode(k.request_hash, 'hex'), 'outcome', k.outcome, 'result', k.result)
          FROM idempotency_key k WHERE k.channel = $4 AND k.key = $5) AS idempotency
  FROM gift_certificate c WHERE c.id = $1";

/// Everything an operation changed, in one statement. Nothing is written unless the version
/// still matches.
pub(crate) const WRITE_SQL: &str = "WITH cert AS (
    UPDATE gift_certificate
       SET balance = $2, held = $3, state = $4, client_id = $5, order_id = $6, payment_id = $7,
           version = version + 1, updated_at = now()
     WHERE id = $1 AND version = $8
 RETURNING id
), holds AS (
    INSERT INTO gift_certificate_hold
           (certificate_id, hold_id, amount, expires_at, status, captured_amount, capture_id, capture_reversed, channel)
    SELECT cert.id, h.hold_id, h.amount, h.expires_at, h.status, h.captured_amount, h.capture_id,
           h.capture_reversed, h.channel
      FROM cert, jsonb_to_recordset($9) AS h(hold_id text, amount bigint, expires_at timestamptz, status text,
           captured_amount bigint, capture_id text, capture_reversed boolean, channel text)
        ON CONFLICT (certificate_id, hold_id) DO UPDATE
       SET status = EXCLUDED.status, captured_amount = EXCLUDED.captured_amount,
           capture_id = EXCLUDED.capture_id, capture_reversed = EXCLUDED.capture_reversed
), ops AS (
    SELECT o.* FROM cert, jsonb_to_recordset($10) AS o(operation_id text, action text, detail jsonb,
           amount bigint, target_id text, balance_before bigint, balance_after bigint, state_before text,
           state_after text, at timestamptz)
), op_rows AS (
    INSERT INTO gift_certificate_operation (certificate_id, operation_id, action, detail, amount, target_id,
           balance_before, balance_after, state_before, state_after, channel, at)
    SELECT $1, operation_id, action, detail, amount, target_id, balance_before, balance_after,
           state_before, state_after, $11, at FROM ops
), audit AS (
    INSERT INTO audit_log (at, action, certificate_id, operation_id, channel, initiator, source_event,
           balance_before, balance_after, details)
    SELECT at, action, $1, operation_id, $11, $12, $13, balance_before, balance_after,
           jsonb_build_object('amount', amount, 'target_id', target_id, 'state_before', state_before,
                              'state_after', state_after)
      FROM ops
), events AS (
    INSERT INTO outbox (topic, key, payload)
    SELECT e.topic, e.key, e.payload
      FROM cert, ROWS FROM (jsonb_to_recordset($14) AS (topic text, key text, payload jsonb))
           WITH ORDINALITY AS e(topic, key, payload, n)
     ORDER BY e.n
), idempotency AS (
    INSERT INTO idempotency_key (channel, key, request_hash, outcome, result, expires_at)
    SELECT $11, $15, $16, 'applied', $17, now() + make_interval(secs => $18) FROM cert WHERE $15 IS NOT NULL
)
SELECT count(*) FROM cert";

/// A result remembered under its key (a refusal, an upload job's outcome), so a retry gets the
/// same answer.
pub(crate) const REMEMBER_SQL: &str =
    "INSERT INTO idempotency_key (channel, key, request_hash, outcome, result, expires_at)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))";

/// The result stored under a key, for a request that locks no certificate (an upload job).
pub(crate) const STORED_RESULT_SQL: &str =
    "SELECT jsonb_build_object('hash', encode(request_hash, 'hex'), 'outcome', outcome, 'result', result)
  FROM idempotency_key WHERE channel = $1 AND key = $2";

/// Adds an operator's reason to the audit row an operation's write statement made, in the same
/// transaction (its details keep the amount, target and states).
pub(crate) const RECORD_REASON_SQL: &str =
    "UPDATE audit_log SET details = details || jsonb_build_object('reason', $3::text)
  WHERE certificate_id = $1 AND operation_id = $2";

// ---------------------------------------------------------------------------------------------
// A group of operations (`backbone_certificates::group`): the same statements, set-based.

/// [`LOCK_SQL`] for each key, answers in the keys' order.
pub(crate) const LOCK_ALL_SQL: &str = "SELECT pg_try_advisory_xact_lock(t.k)
  FROM unnest($1::bigint[]) WITH ORDINALITY AS t(k, n) ORDER BY t.n";

/// Locks every certificate named (by code `$1[n]` or id `$2[n]`) in id order, so two groups
/// that share certificates wait for each other and never deadlock. A code's id never changes,
/// so it is looked up before the lock.
pub(crate) const LOCK_ALL_BY_REF_SQL: &str = "WITH wanted AS (
    SELECT t.n, coalesce(t.id, (SELECT c.id FROM gift_certificate c WHERE c.code_digest = t.code_digest)) AS id
      FROM unnest($1::bytea[], $2::uuid[]) WITH ORDINALITY AS t(code_digest, id, n)
)
SELECT g.id, w.n FROM wanted w JOIN gift_certificate g ON g.id = w.id ORDER BY g.id FOR UPDATE OF g";

/// [`LOAD_SQL`] for each locked certificate `$1[n]` with its own target, operation and key; a
/// statement after the lock for the same reason.
pub(crate) const LOAD_ALL_SQL: &str =
    "SELECT t.n, c.id, c.code_digest, c.code_last4, c.currency, c.nominal, c.balance, c.state, c.expires_at,
       c.client_id, c.order_id, c.payment_id, c.cvc_verifier, c.version,
       (SELECT coalesce(jsonb_agg(to_jsonb(h)), '[]'::jsonb) FROM gift_certificate_hold h
         WHERE h.certificate_id = c.id
           AND (h.status = 'active' OR h.hold_id = t.target OR h.capture_id = t.target)) AS holds,
       (SELECT o.detail FROM gift_certificate_operation o
         WHERE o.certificate_id = c.id AND o.operation_id = t.operation) AS applied,
       (SELECT jsonb_build_object('hash', encode(k.request_hash, 'hex'), 'outcome', k.outcome, 'result', k.result)
          FROM idempotency_key k WHERE k.channel = t.channel AND k.key = t.key) AS idempotency
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
       WITH ORDINALITY AS t(id, target, operation, channel, key, n)
  JOIN gift_certificate c ON c.id = t.id";

/// [`WRITE_SQL`] for operations on distinct certificates, in one statement; their operation,
/// audit and outbox rows in the order given. Returns how many certificates were written (a
/// version that changed writes nothing of its operation).
pub(crate) const WRITE_ALL_SQL: &str = "WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::bigint[], $9::jsonb[], $10::jsonb[], $11::text[], $12::text[], $13::text[],
                         $14::jsonb[], $15::text[], $16::bytea[], $17::jsonb[], $18::float8[])
        WITH ORDINALITY AS t(id, balance, held, state, client_id, order_id, payment_id, version, holds,
                             operations, channel, initiator, source_event, events, key, request_hash, result,
                             retention, n)
), cert AS (
    UPDATE gift_certificate g
       SET balance = i.balance, held = i.held, state = i.state, client_id = i.client_id,
           order_id = i.order_id, payment_id = i.payment_id, version = g.version + 1, updated_at = now()
      FROM input i
     WHERE g.id = i.id AND g.version = i.version
 RETURNING g.id
), written AS (
    SELECT i.* FROM input i JOIN cert USING (id)
), holds AS (
    INSERT INTO gift_certificate_hold
           (certificate_id, hold_id, amount, expires_at, status, captured_amount, capture_id, capture_reversed, channel)
    SELECT w.id, h.hold_id, h.amount, h.expires_at, h.status, h.captured_amount, h.capture_id,
           h.capture_reversed, h.channel
      FROM written w, jsonb_to_recordset(w.holds) AS h(hold_id text, amount bigint, expires_at timestamptz,
           status text, captured_amount bigint, capture_id text, capture_reversed boolean, channel text)
        ON CONFLICT (certificate_id, hold_id) DO UPDATE
       SET status = EXCLUDED.status, captured_amount = EXCLUDED.captured_amount,
           capture_id = EXCLUDED.capture_id, capture_reversed = EXCLUDED.capture_reversed
), ops AS (
    SELECT w.id AS certificate_id, w.n, w.channel, w.initiator, w.source_event, o.*
      FROM written w,
           ROWS FROM (jsonb_to_recordset(w.operations) AS (operation_id text, action text, detail jsonb,
               amount bigint, target_id text, balance_before bigint, balance_after bigint, state_before text,
               state_after text, at timestamptz))
           WITH ORDINALITY AS o(operation_id, action, detail, amount, target_id, balance_before, balance_after,
                                state_before, state_after, at, k)
), op_rows AS (
    INSERT INTO gift_certificate_operation (certificate_id, operation_id, action, detail, amount, target_id,
           balance_before, balance_after, state_before, state_after, channel, at)
    SELECT certificate_id, operation_id, action, detail, amount, target_id, balance_before, balance_after,
           state_before, state_after, channel, at
      FROM ops ORDER BY n, k
), audit AS (
    INSERT INTO audit_log (at, action, certificate_id, operation_id, channel, initiator, source_event,
           balance_before, balance_after, details)
    SELECT at, action, certificate_id, operation_id, channel, initiator, source_event, balance_before,
           balance_after,
           jsonb_build_object('amount', amount, 'target_id', target_id, 'state_before', state_before,
                              'state_after', state_after)
      FROM ops ORDER BY n, k
), events AS (
    INSERT INTO outbox (topic, key, payload)
    SELECT e.topic, e.key, e.payload
      FROM written w, ROWS FROM (jsonb_to_recordset(w.events) AS (topic text, key text, payload jsonb))
           WITH ORDINALITY AS e(topic, key, payload, k)
     ORDER BY w.n, e.k
), idempotency AS (
    INSERT INTO idempotency_key (channel, key, request_hash, outcome, result, expires_at)
    SELECT channel, key, request_hash, 'applied', result, now() + make_interval(secs => retention)
      FROM written WHERE key IS NOT NULL
)
SELECT count(*) FROM cert";

/// [`REMEMBER_SQL`] for distinct keys.
pub(crate) const REMEMBER_ALL_SQL: &str =
    "INSERT INTO idempotency_key (channel, key, request_hash, outcome, result, expires_at)
SELECT channel, key, request_hash, outcome, result, now() + make_interval(secs => retention)
  FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::jsonb[], $6::float8[])
       AS t(channel, key, request_hash, outcome, result, retention)";
