//! What a channel's request goes through around the certificate service: the attempt limits
//! (wrong codes and CVCs are counted per channel and per certificate), the CVC turned into its
//! keyed verifier, the idempotency claim with a hash of the request, the write detached from the
//! request, then the balance cache dropped and the relay woken. The HTTP handlers parse and
//! render; this decides what happens in between.

use crate::http::{apply_error, not_found};
use crate::problem::{Problem, ProblemCode};
use crate::state::AppState;
use backbone_certificates::events::Origin;
use backbone_certificates::store::BalanceView;
use backbone_certificates::Channel;
use backbone_certificates::{
    Applied, ApplyError, CertificateRef, CodeDigest, Command, Cvc, IdempotencyClaim, OperationId,
    OperationRequest,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// One operation as a channel asks for it.
pub struct ChannelOperation {
    /// The route template's last segment, for metrics and the request hash.
    pub route: &'static str,
    pub channel: Channel,
    pub digest: CodeDigest,
    pub digest_hex: String,
    pub command: Command,
    /// What defines the request besides the route and certificate (the parsed body).
    pub canonical: serde_json::Value,
    pub cvc: Option<Cvc>,
    pub idempotency_key: String,
    pub initiator: Option<String>,
    /// Queue the CVC SMS to this number with the activation.
    pub cvc_sms_to: Option<String>,
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

pub async fn too_many_attempts(
    state: &AppState,
    channel: Channel,
    digest_hex: Option<&str>,
) -> Result<(), Problem> {
    match state.limiter.is_blocked(channel.as_str(), digest_hex).await {
        Ok(false) => Ok(()),
        Ok(true) => {
            state.metrics.blocked.inc();
            Err(Problem::new(ProblemCode::TooManyAttempts, None).with(
                "retry_after_seconds",
                state.limiter.policy().lockout_seconds.into(),
            ))
        }
        // Failing open would give up the brute-force limit; failing closed keeps it.
        Err(e) => {
            tracing::error!(error = %e, "attempt counters unavailable");
            Err(Problem::new(ProblemCode::Unavailable, None))
        }
    }
}

pub async fn record_failure(state: &AppState, channel: Channel, digest_hex: Option<&str>) {
    state.metrics.failed_lookups.inc();
    if let Err(e) = state.limiter.record_failure(channel.as_str(), digest_hex).await {
        tracing::error!(error = %e, "cannot count a failed attempt");
    }
}

/// Runs one operation under its idempotency key; counts wrong codes and CVCs.
pub async fn operate(state: &AppState, op: ChannelOperation) -> Result<Applied, Problem> {
    let key = op.idempotency_key;
    let cvc_verifier = op
        .cvc
        .as_ref()
        .map(|cvc| state.keys.cvc_verifier(&op.digest, cvc));
    let mut canonical = op.canonical;
    if let Some(v) = &cvc_verifier {
        canonical["cvc"] = hex::encode(v).into();
    }
    let request = OperationRequest {
        certificate: CertificateRef::Code(op.digest),
        operation: OperationId::parse(Uuid::now_v7().to_string())
            .map_err(|e| Problem::new(ProblemCode::Internal, Some(e.to_string())))?,
        command: op.command,
        origin: Origin {
            channel: op.channel,
            initiator: op.initiator,
            source_event: Some(format!("http:{key}")),
        },
        idempotency: Some(IdempotencyClaim {
            request_hash: request_hash(op.route, &op.digest, canonical),
            key,
            retention: time::Duration::hours(i64::from(state.idempotency_retention_hours)),
        }),
        cvc_verifier,
        cvc_sms_to: op.cvc_sms_to,
    };
    let timer = state
        .metrics
        .operation_seconds
        .with_label_values(&[op.route])
        .start_timer();
    // Detached: a client that hangs up must not cancel the transaction half-way (a dropped
    // transaction would keep its locks until its connection is reused).
    let certificates = state.certificates.clone();
    let result = tokio::spawn(async move { certificates.apply(request).await })
        .await
        .unwrap_or_else(|e| Err(ApplyError::Unavailable(format!("operation task failed: {e}"))));
    timer.observe_duration();
    match result {
        Ok(applied) => {
            state
                .metrics
                .operations
                .with_label_values(&[op.route, if applied.replayed { "replayed" } else { "applied" }])
                .inc();
            if !applied.replayed {
                state.after_commit(&op.digest_hex).await;
            }
            // The right CVC ends the certificate's run of failures.
            if op.cvc.is_some() {
                if let Err(e) = state.limiter.clear(&op.digest_hex).await {
                    tracing::warn!(error = %e, "cannot reset the failed-attempt count");
                }
            }
            Ok(applied)
        }
        Err(e) => {
            let wrong = matches!(e, ApplyError::NotFound | ApplyError::WrongCvc);
            if wrong && op.cvc.is_some() {
                record_failure(state, op.channel, Some(&op.digest_hex)).await;
            }
            let problem = apply_error(e);
            state
                .metrics
                .operations
                .with_label_values(&[op.route, problem.code])
                .inc();
            Err(problem)
        }
    }
}

/// A balance check: the limits first, then the cached view, then the CVC. An unknown code, an
/// unknown certificate and a wrong CVC are the same answer, and each is counted.
pub async fn check_balance(
    state: &AppState,
    channel: Channel,
    code: Result<(CodeDigest, String), Problem>,
    cvc: &Cvc,
) -> Result<BalanceView, Problem> {
    let (digest, digest_hex) = match code {
        Ok(d) => d,
        Err(p) => {
            too_many_attempts(state, channel, None).await?;
            record_failure(state, channel, None).await;
            return Err(p);
        }
    };
    too_many_attempts(state, channel, Some(&digest_hex)).await?;
    let view = state.balance_view(&digest, &digest_hex).await?;
    let Some(view) = view else {
        record_failure(state, channel, Some(&digest_hex)).await;
        return Err(not_found());
    };
    if !state.keys.verify_cvc(&digest, cvc, &view.cvc_verifier) {
        record_failure(state, channel, Some(&digest_hex)).await;
        return Err(not_found());
    }
    Ok(view)
}
