DROP TABLE shipment_newest;
DELETE FROM sync_retry WHERE attempts = 0;
ALTER TABLE sync_retry DROP CONSTRAINT sync_retry_attempts_check;
ALTER TABLE sync_retry ADD CONSTRAINT sync_retry_attempts_check CHECK (attempts >= 1);
ALTER TABLE sync_retry DROP COLUMN first_failed_at;
