//! What a channel's request goes through around the certificate service: the attempt limits
//! (every lookup is counted per channel, and per certificate when it carries a CVC, before it is
//! verified; a success gives its count back), the CVC turned into its keyed verifier, the
//! idempotency claim with a hash of the request, the write detached from the request, then the
//! balance cache dropped and the relay woken. The HTTP handlers parse and render; this decides
//! what happens in between.

use crate::http::{apply_error, not_found, unknown_hold};
use crate::problem::{Problem, ProblemCode};
use crate::state::AppState;
use backbone_certificates::events::Origin;
use backbone_certificates::store::BalanceView;
use backbone_certificates::Channel;
use backbone_certificates::{
    Applied, ApplyError, CertificateRef, CodeDigest, Command, Cvc, IdempotencyClaim, OperationId,
    OperationRequest,
};
use backbone_redis::CachedCheck;
use backbone_redis::{Attempt, Reservation};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// One operation as a channel asks for it.
pub struct ChannelOperation {
    /// The route template's last segment, for metrics and the request hash.
    pub route: &'static str,
    pub channel: Channel,
    /// The code's digest and its hex form; `None` for a code that does not parse.
    pub code: Option<(CodeDigest, String)>,
    pub command: Command,
    /// What defines the request besides the route and certificate (the parsed body).
    pub canonical: serde_json::Value,
    pub cvc: Option<Cvc>,
    /// The request's `Idempotency-Key`. `None` (an admin API write sent without one): nothing is
    /// stored under a key, and a repeat is a new request.
    pub idempotency_key: Option<String>,
    pub initiator: Option<String>,
    /// Queue the CVC SMS to this number with the activation.
    pub cvc_sms_to: Option<String>,
    /// Why a person asked for it (an operator's reason): recorded with its audit row.
    pub reason: Option<String>,
}

/// The request's identity for idempotency: route, certificate and the parsed body, with the CVC
/// replaced by its keyed verifier so the stored hash reveals nothing about it.
fn request_hash(route: &str, digest: &CodeDigest, canonical: serde_json::Value) -> [u8; 32] {
    Sha256::new()
        .chain_update(route.as_bytes())
        .chain_update([0])
        .chain_update(digest.0)
        .chain_update([0])
        .chain_update(canonical.to_string().as_bytes())
        .finalize()
        .into()
}

/// How events and the audit log name the request that caused a change: a digest of the channel
/// and its `Idempotency-Key`, never the key itself (a key is a capability: whoever knows it can
/// ask for its stored answer). An operator finds a key's events by computing the same digest.
pub fn source_event(channel: Channel, idempotency_key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"idempotency-key\0")
        .chain_update(channel.as_str().as_bytes())
        .chain_update([0])
        .chain_update(idempotency_key.as_bytes())
        .finalize();
    format!("http:{}", hex::encode(&digest[..16]))
}

/// Admits a lookup: refused with 429 when the channel's or the certificate's failures reach
/// their limit (`Retry-After`: when that counter's window ends), with 503 when the counters cannot
/// be reached or written (never run unlimited). With `digest_hex` (an attempt that carries a
/// CVC), the attempt also takes one of the certificate's places in flight: when all are taken
/// it waits for one, up to about two seconds, then is refused with 429 and `Retry-After: 1`.
pub async fn admit(
    state: &AppState,
    channel: Channel,
    digest_hex: Option<&str>,
) -> Result<Reservation, Problem> {
    use backon::{ConstantBuilder, Retryable};
    #[derive(Debug)]
    enum Refused {
        Busy,
        Blocked(u64),
        Counters(backbone_redis::RedisError),
    }
    let reserve = || async {
        match state.limiter.reserve(channel.as_str(), digest_hex).await {
            Ok(Attempt::Allowed(reservation)) => Ok(reservation),
            Ok(Attempt::Busy) => Err(Refused::Busy),
            Ok(Attempt::Blocked { retry_after_seconds }) => Err(Refused::Blocked(retry_after_seconds)),
            Err(e) => Err(Refused::Counters(e)),
        }
    };
    let waiting = ConstantBuilder::default()
        .with_delay(std::time::Duration::from_millis(20))
        .with_max_times(100)
        .with_jitter();
    let too_many = |seconds: u64| too_many(state, seconds);
    match reserve.retry(waiting).when(|e| matches!(e, Refused::Busy)).await {
        Ok(reservation) => Ok(reservation),
        Err(Refused::Busy) => Err(too_many(1)),
        Err(Refused::Blocked(seconds)) => Err(too_many(seconds)),
        Err(Refused::Counters(e)) => {
            tracing::error!(error = %e, "attempt counters unavailable");
            Err(Problem::new(ProblemCode::Unavailable, None))
        }
    }
}

/// `429 too-many-attempts`, counted.
fn too_many(state: &AppState, retry_after_seconds: u64) -> Problem {
    state.metrics.blocked.inc();
    Problem::new(ProblemCode::TooManyAttempts, None).with("retry_after_seconds", retry_after_seconds.into())
}

/// Ends an admitted lookup; a failed one is counted. A failure that cannot be counted is not
/// answered as one (that would be a guess the limits never saw): it becomes a 503.
async fn finish(state: &AppState, reservation: &Reservation, failed: bool) -> Result<(), Problem> {
    if failed {
        state.metrics.failed_lookups.inc();
    }
    match state.limiter.finish(reservation, failed).await {
        Ok(()) => Ok(()),
        Err(e) if failed => {
            tracing::error!(error = %e, "cannot count a failed attempt");
            Err(Problem::new(ProblemCode::Unavailable, None))
        }
        Err(e) => {
            // Its place in flight is freed when its lease ends.
            tracing::warn!(error = %e, "cannot end an attempt");
            Ok(())
        }
    }
}

/// Admits the lookup of a code: by its digest when it carries a CVC, on the channel's budget
/// otherwise; a code that does not parse is a counted failure at once, answered `unknown`.
async fn admit_code(
    state: &AppState,
    channel: Channel,
    code: Option<(CodeDigest, String)>,
    with_cvc: bool,
    unknown: Problem,
) -> Result<(Reservation, CodeDigest, String), Problem> {
    match code {
        Some((digest, digest_hex)) => {
            let reservation = admit(state, channel, with_cvc.then_some(digest_hex.as_str())).await?;
            Ok((reservation, digest, digest_hex))
        }
        None => {
            let reservation = admit(state, channel, None).await?;
            finish(state, &reservation, true).await?;
            Err(unknown)
        }
    }
}

/// Runs one operation under its idempotency key. Every operation counts toward the channel's
/// lookup budget; one that carries a CVC counts toward the certificate's too. An unknown code, a
/// wrong CVC and a hold or capture that is not the channel's to name stay counted.
pub async fn operate(state: &AppState, op: ChannelOperation) -> Result<Applied, Problem> {
    // Capture and void name a hold: whatever was not found, the answer is `unknown-hold`.
    let names_hold = op.command.target().is_some();
    let unknown = move || if names_hold { unknown_hold() } else { not_found() };
    let (reservation, digest, digest_hex) =
        admit_code(state, op.channel, op.code, op.cvc.is_some(), unknown()).await?;
    let key = op.idempotency_key;
    // A CVC is verified first, in the attempt's place among the certificate's attempts in flight
    // and before any stored answer is looked at: a burst of guesses gets at most the limit
    // verified, and a known Idempotency-Key tells nothing about a CVC.
    let cvc_verifier = match &op.cvc {
        Some(cvc) => {
            let checked = verify_cvc(state, &digest, &digest_hex, cvc).await;
            finish(state, &reservation, matches!(checked, Ok(None))).await?;
            checked?.ok_or_else(not_found)?;
            Some(state.keys.cvc_verifier(&digest, cvc))
        }
        None => None,
    };
    let mut canonical = op.canonical;
    if let Some(v) = &cvc_verifier {
        canonical["cvc"] = hex::encode(v).into();
    }
    let request = OperationRequest {
        certificate: CertificateRef::Code(digest),
        operation: OperationId::parse(Uuid::now_v7().to_string())
            .map_err(|e| Problem::new(ProblemCode::Internal, Some(e.to_string())))?,
        command: op.command,
        origin: Origin {
            channel: op.channel,
            initiator: op.initiator,
            source_event: key.as_deref().map(|key| source_event(op.channel, key)),
        },
        idempotency: key.map(|key| IdempotencyClaim {
            request_hash: request_hash(op.route, &digest, canonical),
            key,
            retention: time::Duration::hours(i64::from(state.idempotency_retention_hours)),
        }),
        cvc_verifier,
        cvc_sms_to: op.cvc_sms_to,
        reason: op.reason,
    };
    let timer = state
        .metrics
        .operation_seconds
        .with_label_values(&[op.route])
        .start_timer();
    // In the next group commit, which runs to its end even when the client hangs up (a dropped
    // transaction would keep its locks until its connection is reused).
    let result = state.operations.apply(request).await;
    timer.observe_duration();
    let failed_lookup = matches!(
        result,
        Err(ApplyError::NotFound | ApplyError::WrongCvc | ApplyError::UnknownTarget)
    );
    if cvc_verifier.is_none() {
        finish(state, &reservation, failed_lookup).await?;
    } else if failed_lookup {
        // Verified a moment ago; only a certificate changed since can get here.
        state.metrics.failed_lookups.inc();
    }
    match result {
        Ok(applied) => {
            state
                .metrics
                .operations
                .with_label_values(&[op.route, if applied.replayed { "replayed" } else { "applied" }])
                .inc();
            if !applied.replayed {
                state.after_commit(&digest_hex).await;
            }
            Ok(applied)
        }
        Err(e) => {
            let problem = match e {
                ApplyError::NotFound | ApplyError::UnknownTarget => unknown(),
                other => apply_error(other),
            };
            state
                .metrics
                .operations
                .with_label_values(&[op.route, problem.code])
                .inc();
            Err(problem)
        }
    }
}

/// The certificate's view when `cvc` is its CVC, read through the balance cache (the verifier
/// never changes); `None` alike for an unknown certificate and a wrong CVC.
async fn verify_cvc(
    state: &AppState,
    digest: &CodeDigest,
    digest_hex: &str,
    cvc: &Cvc,
) -> Result<Option<BalanceView>, Problem> {
    let view = state.balance_view(digest, digest_hex).await?;
    Ok(view.filter(|v| state.keys.verify_cvc(digest, cvc, &v.cvc_verifier)))
}

/// A balance check: counted first, then the cached view, then the CVC. An unknown code, an
/// unknown certificate and a wrong CVC are the same answer, and each stays counted.
pub async fn check_balance(
    state: &AppState,
    channel: Channel,
    code: Option<(CodeDigest, String)>,
    cvc: &Cvc,
) -> Result<BalanceView, Problem> {
    if let Some((digest, digest_hex)) = &code {
        if let Some(answer) = check_cached(state, channel, digest, digest_hex, cvc).await {
            return answer;
        }
    }
    let (reservation, digest, digest_hex) = admit_code(state, channel, code, true, not_found()).await?;
    let checked = verify_cvc(state, &digest, &digest_hex, cvc).await;
    finish(state, &reservation, matches!(checked, Ok(None))).await?;
    checked?.ok_or_else(not_found)
}

/// A balance check of a cached certificate, answered in one Redis round trip under the same
/// limits; `None` when it is not cached (or the cache cannot say), and the long way decides.
async fn check_cached(
    state: &AppState,
    channel: Channel,
    digest: &CodeDigest,
    digest_hex: &str,
    cvc: &Cvc,
) -> Option<Result<BalanceView, Problem>> {
    let verifier = state.keys.cvc_verifier(digest, cvc);
    let checked = state
        .limiter
        .check_cached(channel.as_str(), digest_hex, &verifier, &state.cache)
        .await;
    let hit = || state.metrics.cache.with_label_values(&["hit"]).inc();
    match checked {
        Ok(CachedCheck::Verified(view)) => {
            // An entry this version cannot read is checked the long way.
            let view = serde_json::from_slice::<BalanceView>(&view).ok()?;
            hit();
            Some(Ok(view))
        }
        Ok(CachedCheck::WrongCvc) => {
            hit();
            state.metrics.failed_lookups.inc();
            Some(Err(not_found()))
        }
        Ok(CachedCheck::Blocked { retry_after_seconds }) => Some(Err(too_many(state, retry_after_seconds))),
        Ok(CachedCheck::Uncached) => None,
        Err(e) => {
            // The long way's counters fail closed if Redis cannot count.
            tracing::warn!(error = %e, "cached balance check unavailable");
            None
        }
    }
}
