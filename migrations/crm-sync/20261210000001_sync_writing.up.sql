-- Per field, digests of values a session was writing to the CRM when it last ended without a
-- commit (a crash, a lost reply): the next session recognises them in the CRM as ours.
ALTER TABLE client_sync_base ADD COLUMN writing jsonb NOT NULL DEFAULT '{}';
-- The task states a session was writing to the CRM when it last ended without a commit.
ALTER TABLE crm_task ADD COLUMN writing_states text[] NOT NULL DEFAULT '{}';
