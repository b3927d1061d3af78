-- crm-sync: the attempt log, processed event ids and the retry queue.

CREATE TABLE integrations_log (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         text,
    shipment_id      text,
    client_id        text,
    correlation_id   text,
    -- The CRM body for this event (what was or would have been sent).
    payload          jsonb,
    http_status      smallint,
    response_excerpt text,
    outcome          text NOT NULL CHECK (outcome IN
                        ('success', 'duplicate', 'stale', 'unchanged', 'retry_scheduled', 'dead_lettered')),
    attempt          integer NOT NULL CHECK (attempt >= 1),
    error            text,
    event_time       timestamptz,
    sent_at          timestamptz NOT NULL,
    latency_ms       double precision CHECK (latency_ms >= 0),
    source_topic     text,
    source_partition integer,
    source_offset    bigint
);

-- "What happened to this shipment?"
CREATE INDEX integrations_log_shipment_idx ON integrations_log (shipment_id, sent_at DESC);
-- "What happened to this event?"
CREATE INDEX integrations_log_event_idx ON integrations_log (event_id);
-- "What failed in the last hour?"
CREATE INDEX integrations_log_failures_idx ON integrations_log (sent_at DESC)
    WHERE outcome IN ('retry_scheduled', 'dead_lettered');

-- The idempotency record: the latest outcome of every event id seen.
CREATE TABLE processed_events (
    event_id     text PRIMARY KEY,
    outcome      text NOT NULL CHECK (outcome IN
                    ('success', 'stale', 'unchanged', 'retry_scheduled', 'dead_lettered')),
    replay_count integer NOT NULL DEFAULT 0 CHECK (replay_count >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Events parked after a transient CRM failure, waiting for their next attempt.
CREATE TABLE sync_retry (
    event_id         text PRIMARY KEY,
    shipment_id      text NOT NULL,
    event            jsonb NOT NULL,
    event_time       timestamptz NOT NULL,
    source_topic     text NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint NOT NULL,
    attempts         integer NOT NULL CHECK (attempts >= 1),
    replay_count     integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text NOT NULL,
    parked_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX sync_retry_due_idx ON sync_retry (source_topic, source_partition, next_attempt_at);
CREATE INDEX sync_retry_shipment_idx ON sync_retry (shipment_id);
