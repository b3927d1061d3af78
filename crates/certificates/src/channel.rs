//! Who calls: the channels and what each may do. Names as the seed gives them; they scope
//! idempotency keys, are written to the audit log and the transaction events, and decide which
//! operations a service token allows.

use serde::{Deserialize, Serialize};

/// The callers of the API. Names as in the seed (`OnlineStore`, `POS`, ...); the lower-case
/// forms are accepted too, since environment variables reach the configuration lower-cased
/// (`GIFT_CERTIFICATES_TOKENS__POS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Channel {
    #[serde(alias = "onlinestore", alias = "online_store")]
    OnlineStore,
    #[serde(rename = "POS", alias = "pos")]
    Pos,
    #[serde(alias = "payments")]
    Payments,
    #[serde(alias = "batchloader", alias = "batch_loader")]
    BatchLoader,
    #[serde(rename = "internal", alias = "Internal")]
    Internal,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::OnlineStore => "OnlineStore",
            Channel::Pos => "POS",
            Channel::Payments => "Payments",
            Channel::BatchLoader => "BatchLoader",
            Channel::Internal => "internal",
        }
    }

    /// What each channel may do: the fronts spend, Payments sells and refunds, the loader
    /// uploads, internal tools (the sweeper among them) may do everything.
    pub fn allows(self, scope: Scope) -> bool {
        use Scope::*;
        match self {
            Channel::OnlineStore | Channel::Pos => matches!(scope, Balance | Authorize | Capture | Void),
            Channel::Payments => matches!(scope, Balance | Activate | Refund | Void),
            Channel::BatchLoader => matches!(scope, Upload),
            Channel::Internal => true,
        }
    }
}

impl Channel {
    /// Whether this channel may capture or void a hold (or reverse a capture) that the channel
    /// named `owner` made: only its own, except `internal`, which may act on any.
    pub fn may_act_on(self, owner: &str) -> bool {
        self == Channel::Internal || self.as_str() == owner
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Upload,
    Activate,
    Authorize,
    Capture,
    Void,
    Refund,
    Cancel,
    Balance,
    Read,
}
