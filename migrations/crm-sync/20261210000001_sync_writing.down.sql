ALTER TABLE crm_task DROP COLUMN writing_states;
ALTER TABLE client_sync_base DROP COLUMN writing;
