ALTER TABLE client_sync_base DROP COLUMN writing;
