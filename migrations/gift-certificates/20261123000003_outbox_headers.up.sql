-- Kafka headers for outbox records, {name: value}: dead letters carry their reason here.
ALTER TABLE outbox ADD COLUMN headers jsonb NOT NULL DEFAULT '{}';
