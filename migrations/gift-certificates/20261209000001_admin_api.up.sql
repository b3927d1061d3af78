-- The admin API (the operator console). `sms_delivery.updated_at`: when a delivery last changed
-- (queued, claimed, retried, failed, sent, requeued), for the list of deliveries; rows older than
-- this migration show its time. A partial index lists the deliveries not sent yet by it, and two
-- indexes count the last hours for the overview's chart without reading the whole history:
-- operations by time (BRIN: the table is appended in time order, so the index is a few pages
-- and costs the write path next to nothing) and refusals stored under an Idempotency-Key by time
-- (partial: refusals are few).
ALTER TABLE sms_delivery ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX sms_delivery_unsent_idx ON sms_delivery (updated_at) WHERE status <> 'sent';
CREATE INDEX gift_certificate_operation_at_brin ON gift_certificate_operation USING brin (at);
CREATE INDEX idempotency_key_refused_idx ON idempotency_key (created_at) WHERE outcome = 'refused';
