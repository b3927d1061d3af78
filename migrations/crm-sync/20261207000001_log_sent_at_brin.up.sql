-- "What happened in the last hours?" (the admin API's overview): a BRIN index on the attempt
-- log's send time. The log is appended in time order, so the index is a few pages and costs
-- the write path next to nothing, where a B-tree would add a write per row.
CREATE INDEX integrations_log_sent_at_brin ON integrations_log USING brin (sent_at);
