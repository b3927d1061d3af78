//! Why gift-certificates set a record aside: the stable `x-dlq-reason-code` of its dead letters.

/// Every reason code this service writes, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// Not JSON, or not the contract's shape.
    MalformedJson,
    /// A field's value is not allowed.
    InvalidField,
    UnsupportedVersion,
    /// A record on a topic the consumer does not read.
    UnknownTopic,
    /// An upload job that cannot be taken as a whole.
    InvalidJob,
    /// Rows of an upload job refused (the job's other rows were issued).
    RejectedRows,
    /// A CVC SMS given up after its attempts.
    SmsFailed,
    /// A paid order with certificate lines that were not activated (each with its refusal code).
    ActivationRefused,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::MalformedJson => "malformed_json",
            DeadLetterReason::InvalidField => "invalid_field",
            DeadLetterReason::UnsupportedVersion => "unsupported_version",
            DeadLetterReason::UnknownTopic => "unknown_topic",
            DeadLetterReason::InvalidJob => "invalid_job",
            DeadLetterReason::RejectedRows => "rejected_rows",
            DeadLetterReason::SmsFailed => "sms_failed",
            DeadLetterReason::ActivationRefused => "activation_refused",
        }
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
