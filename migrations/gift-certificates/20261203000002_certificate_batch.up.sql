-- Upload batches opened over the authenticated API (`PUT /certificates/upload/batches/{id}`, or
-- implicitly by an upload over HTTP). Jobs from the upload topic are taken only for a batch
-- recorded here: producing to the topic alone issues nothing.
CREATE TABLE certificate_batch (
    batch_id   text PRIMARY KEY CHECK (batch_id ~ '^[A-Za-z0-9._-]{1,64}$'),
    opened_by  text NOT NULL,
    opened_at  timestamptz NOT NULL DEFAULT now()
);
