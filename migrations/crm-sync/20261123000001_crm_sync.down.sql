DROP TABLE IF EXISTS sync_retry;
DROP TABLE IF EXISTS processed_events;
DROP TABLE IF EXISTS integrations_log;
