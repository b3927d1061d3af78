//! Balance checks and the certificate view.

use super::{apply_error, authenticate_for, code_digest, header, not_found, ApiResult, CVC_HEADER};
use crate::auth::Scope;
use crate::desk;
use crate::problem::{Problem, ProblemCode};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use backbone_certificates::store::CertificateViews;
use backbone_certificates::Cvc;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BalanceResponse {
    pub certificate_id: Uuid,
    pub code_masked: String,
    pub state: String,
    pub currency: String,
    pub balance_minor: i64,
    pub available_minor: i64,
}

#[utoipa::path(get, path = "/certificates/{code}/balance", tag = "certificates",
    params(("code" = String, Path, description = "Certificate code: 16 characters of `ABCDEFGHJKLMNPQRSTUVWXYZ23456789`, either case, optionally in groups of four joined by `-`", pattern = r"^[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}$", min_length = 16, max_length = 19),
           ("X-Certificate-Cvc" = String, Header, description = "The certificate's security code: 3 or 4 digits", pattern = r"^[0-9]{3,4}$", min_length = 3, max_length = 4)),
    responses((status = 200, body = BalanceResponse),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn balance(
    State(state): State<Arc<AppState>>,
    Path(code): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let channel = authenticate_for(&state, &headers, Scope::Balance)?;
    let cvc = header(&headers, CVC_HEADER)
        .ok_or_else(|| Problem::new(ProblemCode::CvcRequired, None))
        .and_then(|c| {
            Cvc::parse(c).map_err(|_| Problem::new(ProblemCode::CvcRequired, Some("3 or 4 digits".into())))
        })?;
    let view = desk::check_balance(&state, channel, code_digest(&state, &code).ok(), &cvc).await?;
    Ok(Json(BalanceResponse {
        certificate_id: view.certificate_id,
        code_masked: backbone_certificates::code::mask_last4(&view.code_last4),
        state: view.state.as_str().to_owned(),
        currency: view.currency,
        balance_minor: view.balance,
        available_minor: view.available,
    })
    .into_response())
}

#[utoipa::path(get, path = "/certificates/{code}", tag = "certificates",
    params(("code" = String, Path, description = "Certificate code: 16 characters of `ABCDEFGHJKLMNPQRSTUVWXYZ23456789`, either case, optionally in groups of four joined by `-`", pattern = r"^[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}$", min_length = 16, max_length = 19)),
    responses((status = 200, description = "State, masked code, links and operation history"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn view(
    State(state): State<Arc<AppState>>,
    Path(code): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    authenticate_for(&state, &headers, Scope::Read)?;
    let (digest, _) = code_digest(&state, &code)?;
    let view = state
        .store()
        .view(&digest)
        .await
        .map_err(|e| apply_error(e.into()))?
        .ok_or_else(not_found)?;
    let mut body =
        serde_json::to_value(&view).map_err(|e| Problem::new(ProblemCode::Internal, Some(e.to_string())))?;
    body["code_masked"] = backbone_certificates::code::mask_last4(&view.code_last4).into();
    Ok(Json(body).into_response())
}
