DROP TABLE IF EXISTS certificate_batch;
