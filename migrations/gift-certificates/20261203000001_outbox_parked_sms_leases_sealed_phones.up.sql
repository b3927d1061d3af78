-- Outbox rows the broker refuses for good (too large, invalid), set aside with their reason so
-- the events after them still go out. `gift-certificates outbox requeue` moves them back to the
-- end of the outbox. `id` is the row's id in `outbox`.
CREATE TABLE outbox_parked (
    id          bigint PRIMARY KEY,
    topic       text NOT NULL,
    key         text NOT NULL,
    payload     jsonb NOT NULL,
    headers     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    reason_code text NOT NULL,
    reason      text NOT NULL
);

-- CVC deliveries: each claim takes a lease token of its own; an outcome is recorded only under
-- the token of the claim that sent it.
ALTER TABLE sms_delivery ADD COLUMN lease_token uuid;

-- Phone numbers at rest: sealed by the key service (as the CVC is) while a delivery or a sale
-- waits, erased once it has served; the last two digits stay for operators. `phone` keeps the
-- numbers of rows written before this migration until the service seals them at start-up.
ALTER TABLE sms_delivery
    ADD COLUMN phone_last2       text,
    ADD COLUMN phone_key_id      text,
    ADD COLUMN phone_wrapped_key bytea,
    ADD COLUMN phone_ciphertext  bytea,
    ALTER COLUMN phone DROP NOT NULL;
UPDATE sms_delivery SET phone_last2 = right(phone, 2);
UPDATE sms_delivery SET phone = NULL WHERE status = 'sent';
ALTER TABLE sms_delivery ALTER COLUMN phone_last2 SET NOT NULL;

ALTER TABLE certificate_sale
    ADD COLUMN phone_last2       text,
    ADD COLUMN phone_key_id      text,
    ADD COLUMN phone_wrapped_key bytea,
    ADD COLUMN phone_ciphertext  bytea;
UPDATE certificate_sale SET phone_last2 = right(phone, 2) WHERE phone IS NOT NULL;
UPDATE certificate_sale SET phone = NULL WHERE activated_at IS NOT NULL;
