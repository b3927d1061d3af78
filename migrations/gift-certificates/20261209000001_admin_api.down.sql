DROP INDEX IF EXISTS idempotency_key_refused_idx;
DROP INDEX IF EXISTS gift_certificate_operation_at_brin;
DROP INDEX IF EXISTS sms_delivery_unsent_idx;
ALTER TABLE sms_delivery DROP COLUMN IF EXISTS updated_at;
