-- An operation loads only a certificate's active holds (and the one it names): without this
-- index it reads every hold the certificate ever had.
CREATE INDEX gift_certificate_hold_active_idx ON gift_certificate_hold (certificate_id) WHERE status = 'active';
