-- crm-sync: the two-way sync of client cards, tasks and interaction history
-- (docs/two-way-sync.md). Ids sort bytewise (COLLATE "C"), as they do in the service.

-- The company's copy of a client card: values, per-field change stamps, a version bumped by
-- every change, and the CRM's id of the contact once known.
CREATE TABLE client_card (
    client_id  text COLLATE "C" PRIMARY KEY,
    card       jsonb NOT NULL DEFAULT '{}',
    stamps     jsonb NOT NULL DEFAULT '{}',
    version    bigint NOT NULL CHECK (version >= 1),
    crm_id     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL
);
-- Reconciliation's "changed since".
CREATE INDEX client_card_updated_idx ON client_card (updated_at);
-- A webhook names the CRM's id; one contact is one client.
CREATE UNIQUE INDEX client_card_crm_id_idx ON client_card (crm_id);

-- Per field, the digest of the value both sides last agreed on.
CREATE TABLE client_sync_base (
    client_id  text COLLATE "C" PRIMARY KEY,
    base       jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE crm_task (
    task_id    text COLLATE "C" PRIMARY KEY,
    client_id  text COLLATE "C" NOT NULL REFERENCES client_card (client_id),
    body       jsonb NOT NULL,
    crm_id     text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX crm_task_client_idx ON crm_task (client_id);
CREATE UNIQUE INDEX crm_task_crm_id_idx ON crm_task (crm_id);

-- Append-only: an entry is never changed once stored.
CREATE TABLE crm_interaction (
    interaction_id text COLLATE "C" PRIMARY KEY,
    client_id      text COLLATE "C" NOT NULL REFERENCES client_card (client_id),
    body           jsonb NOT NULL,
    crm_id         text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX crm_interaction_client_idx ON crm_interaction (client_id);

-- Rows on their way to crm.outgoing and crm.incoming. The relay reads the rows that are there in
-- id order and deletes what the broker acknowledged; it keeps no watermark.
CREATE SEQUENCE crm_outbox_id_seq;
CREATE TABLE crm_outbox (
    id         bigint PRIMARY KEY DEFAULT nextval('crm_outbox_id_seq'),
    topic      text NOT NULL,
    key        text NOT NULL,
    payload    jsonb NOT NULL,
    headers    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE crm_outbox_id_seq OWNED BY crm_outbox.id;

-- Idempotency-Key: the first answer, claimed in the same transaction as the change.
CREATE TABLE api_idempotency (
    scope          text NOT NULL,
    key            text NOT NULL,
    request_digest text NOT NULL,
    answer         jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX api_idempotency_created_idx ON api_idempotency (created_at);

-- Verified webhook hints; the same delivery is stored once.
CREATE TABLE crm_webhook (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vendor       text NOT NULL,
    delivery_id  text NOT NULL,
    entity       text NOT NULL CHECK (entity IN ('contact', 'task', 'note')),
    crm_id       text NOT NULL,
    client_id    text COLLATE "C",
    event        text NOT NULL,
    occurred_at  timestamptz,
    request_id   text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    UNIQUE (vendor, delivery_id)
);
CREATE INDEX crm_webhook_unprocessed_idx ON crm_webhook (received_at) WHERE processed_at IS NULL;

-- A conflict a person decides: both values, their times and sources, why.
CREATE TABLE operator_task (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id     text COLLATE "C" NOT NULL,
    field         text NOT NULL,
    ours          jsonb NOT NULL,
    ours_at       timestamptz,
    ours_source   text,
    theirs        jsonb NOT NULL,
    theirs_at     timestamptz,
    theirs_source text NOT NULL,
    reason        text NOT NULL,
    state         text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    resolution    jsonb,
    resolved_by   text,
    resolved_at   timestamptz,
    CHECK ((state = 'resolved') = (resolved_at IS NOT NULL))
);
-- One open task per client and field.
CREATE UNIQUE INDEX operator_task_open_idx ON operator_task (client_id, field) WHERE state = 'open';
CREATE INDEX operator_task_state_idx ON operator_task (state, id);

-- Every conflict's outcome, and every operator's resolution: the audit.
CREATE TABLE crm_conflict_log (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id        text COLLATE "C" NOT NULL,
    field            text NOT NULL,
    ours             jsonb NOT NULL,
    ours_at          timestamptz,
    ours_source      text,
    theirs           jsonb NOT NULL,
    theirs_at        timestamptz,
    rule             text NOT NULL,
    resolution       text NOT NULL,
    reason           text NOT NULL,
    operator_task_id bigint REFERENCES operator_task (id),
    chosen           jsonb,
    decided_by       text,
    request_id       text,
    at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX crm_conflict_log_client_idx ON crm_conflict_log (client_id, at);

-- Which flow an attempt belongs to: the parcel-status flow or the two-way sync.
ALTER TABLE integrations_log
    ADD COLUMN flow text NOT NULL DEFAULT 'parcel_status' CHECK (flow IN ('parcel_status', 'two_way'));
