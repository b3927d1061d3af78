-- Parked outbox rows go back to the outbox. Sealed phone numbers cannot be opened in SQL: they
-- are lost, and deliveries still waiting for one are marked failed.
INSERT INTO outbox (topic, key, payload, headers, created_at)
SELECT topic, key, payload, headers, created_at FROM outbox_parked ORDER BY id;
DROP TABLE outbox_parked;

UPDATE sms_delivery
   SET status = 'failed', last_error = 'phone number lost in a schema downgrade'
 WHERE phone IS NULL AND status <> 'sent';
UPDATE sms_delivery SET phone = '' WHERE phone IS NULL;
ALTER TABLE sms_delivery
    DROP COLUMN lease_token,
    DROP COLUMN phone_last2,
    DROP COLUMN phone_key_id,
    DROP COLUMN phone_wrapped_key,
    DROP COLUMN phone_ciphertext,
    ALTER COLUMN phone SET NOT NULL;

ALTER TABLE certificate_sale
    DROP COLUMN phone_last2,
    DROP COLUMN phone_key_id,
    DROP COLUMN phone_wrapped_key,
    DROP COLUMN phone_ciphertext;
