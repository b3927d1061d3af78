ALTER TABLE crm_task DROP COLUMN synced_state;
