-- The retry budget is an age: when an event's first attempt failed.
ALTER TABLE sync_retry ADD COLUMN first_failed_at timestamptz;
UPDATE sync_retry SET first_failed_at = parked_at;
ALTER TABLE sync_retry
    ALTER COLUMN first_failed_at SET NOT NULL,
    ALTER COLUMN first_failed_at SET DEFAULT now();
-- An event parked by the open circuit breaker has made no call yet.
ALTER TABLE sync_retry DROP CONSTRAINT sync_retry_attempts_check;
ALTER TABLE sync_retry ADD CONSTRAINT sync_retry_attempts_check CHECK (attempts >= 0);

-- The newest event time known to be reflected in the CRM, per shipment: an older event is stale
-- even where the CRM's own timestamp did not move (a later event with the same status).
CREATE TABLE shipment_newest (
    shipment_id text PRIMARY KEY,
    event_time  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
