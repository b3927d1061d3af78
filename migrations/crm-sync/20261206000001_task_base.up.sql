-- The task state both sides last agreed on (what the dispatcher wrote to the CRM or the processor
-- took from it): a CRM state equal to it is an echo of our own write, never a change of theirs.
ALTER TABLE crm_task ADD COLUMN synced_state text;
