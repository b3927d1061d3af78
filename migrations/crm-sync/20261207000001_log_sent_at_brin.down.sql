DROP INDEX IF EXISTS integrations_log_sent_at_brin;
