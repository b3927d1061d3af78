-- gift-certificates: certificates, holds, operations, audit, idempotency keys, the outbox, sales
-- waiting for payment and SMS deliveries.

CREATE TABLE gift_certificate (
    id              uuid PRIMARY KEY,
    -- HMAC-SHA256 of the normalised code: the lookup key. The code itself is never stored.
    code_digest     bytea NOT NULL UNIQUE CHECK (length(code_digest) = 32),
    code_last4      text NOT NULL CHECK (length(code_last4) = 4),
    currency        char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    nominal         bigint NOT NULL CHECK (nominal > 0),
    balance         bigint NOT NULL,
    -- Sum of active holds.
    held            bigint NOT NULL DEFAULT 0,
    state           text NOT NULL CHECK (state IN
                        ('Issued', 'Active', 'PartiallyRedeemed', 'Redeemed', 'Refunded', 'Cancelled')),
    expires_at      timestamptz,
    client_id       text,
    order_id        text,
    payment_id      text,
    batch_id        text,
    -- HMAC of (code digest, CVC): verifies a presented CVC.
    cvc_verifier    bytea NOT NULL CHECK (length(cvc_verifier) = 32),
    -- AES-256-GCM envelope of the CVC, kept only until the SMS is delivered.
    cvc_key_id      text,
    cvc_wrapped_key bytea,
    cvc_ciphertext  bytea,
    version         bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- The backstop for the balance invariants: whatever the code does, these cannot be broken.
    CONSTRAINT balance_within_nominal CHECK (balance >= 0 AND balance <= nominal),
    CONSTRAINT holds_within_balance CHECK (held >= 0 AND held <= balance),
    CONSTRAINT state_follows_balance CHECK (
        (state <> 'Active' OR balance = nominal)
        AND (state <> 'PartiallyRedeemed' OR (balance > 0 AND balance < nominal))
        AND (state <> 'Redeemed' OR balance = 0))
);

CREATE INDEX gift_certificate_batch_idx ON gift_certificate (batch_id);

CREATE TABLE gift_certificate_hold (
    certificate_id   uuid NOT NULL REFERENCES gift_certificate (id),
    -- The authorize operation's id; callers capture and void by it.
    hold_id          text NOT NULL,
    amount           bigint NOT NULL CHECK (amount > 0),
    expires_at       timestamptz NOT NULL,
    status           text NOT NULL CHECK (status IN ('active', 'captured', 'released', 'expired')),
    captured_amount  bigint CHECK (captured_amount > 0 AND captured_amount <= amount),
    capture_id       text,
    capture_reversed boolean NOT NULL DEFAULT false,
    channel          text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (certificate_id, hold_id),
    CONSTRAINT captured_has_capture CHECK ((status = 'captured') = (capture_id IS NOT NULL)
                                           AND (capture_id IS NULL) = (captured_amount IS NULL))
);

CREATE UNIQUE INDEX gift_certificate_hold_capture_idx
    ON gift_certificate_hold (certificate_id, capture_id) WHERE capture_id IS NOT NULL;
-- The sweeper's queue.
CREATE INDEX gift_certificate_hold_due_idx ON gift_certificate_hold (expires_at) WHERE status = 'active';

CREATE TABLE gift_certificate_operation (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    certificate_id uuid NOT NULL REFERENCES gift_certificate (id),
    operation_id   text NOT NULL,
    action         text NOT NULL,
    -- The domain's action, for replays.
    detail         jsonb NOT NULL,
    amount         bigint,
    target_id      text,
    balance_before bigint NOT NULL,
    balance_after  bigint NOT NULL,
    state_before   text NOT NULL,
    state_after    text NOT NULL,
    channel        text NOT NULL,
    at             timestamptz NOT NULL,
    -- One effect per operation id.
    UNIQUE (certificate_id, operation_id)
);

CREATE TABLE audit_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             timestamptz NOT NULL,
    action         text NOT NULL,
    certificate_id uuid,
    operation_id   text,
    channel        text NOT NULL,
    initiator      text,
    source_event   text,
    balance_before bigint,
    balance_after  bigint,
    details        jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_log_certificate_idx ON audit_log (certificate_id, at);

-- Idempotency-Key records, per channel, written in the same transaction as the effect.
CREATE TABLE idempotency_key (
    channel         text NOT NULL,
    key             text NOT NULL,
    request_hash    bytea NOT NULL,
    -- 'applied' or 'refused'; `result` is what the first request got, replayed to retries.
    outcome         text NOT NULL CHECK (outcome IN ('applied', 'refused')),
    result          jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (channel, key)
);

CREATE INDEX idempotency_key_expiry_idx ON idempotency_key (expires_at);

-- Events written with the change that caused them, relayed to Kafka in id order.
CREATE TABLE outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic      text NOT NULL,
    key        text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A certificate sale: an order with certificate lines, activated once payments cover it.
CREATE TABLE certificate_sale (
    order_id     text PRIMARY KEY,
    client_id    text,
    phone        text,
    currency     char(3) NOT NULL,
    total_minor  bigint NOT NULL CHECK (total_minor > 0),
    -- [{line_id, certificate_id, amount_minor}]
    lines        jsonb NOT NULL,
    source_event text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz
);

-- Payments by order; kept for orders not seen yet, since the two topics are not ordered.
CREATE TABLE sale_payment (
    payment_id   text PRIMARY KEY,
    order_id     text NOT NULL,
    currency     char(3) NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    source_event text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX sale_payment_order_idx ON sale_payment (order_id);

-- One CVC SMS per certificate.
CREATE TABLE sms_delivery (
    certificate_id  uuid PRIMARY KEY REFERENCES gift_certificate (id),
    phone           text NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    provider_id     text,
    sent_at         timestamptz,
    last_error      text
);

CREATE INDEX sms_delivery_due_idx ON sms_delivery (next_attempt_at) WHERE status = 'pending';

-- Upload jobs of pre-generated codes, one row per (batch, job): a re-sent job counts once.
CREATE TABLE certificate_batch_job (
    batch_id    text NOT NULL,
    job         integer NOT NULL CHECK (job >= 0),
    submitted   integer NOT NULL,
    issued      integer NOT NULL,
    duplicates  integer NOT NULL,
    rejected    integer NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, job)
);
