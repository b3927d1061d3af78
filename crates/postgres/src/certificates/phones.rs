//! Phone numbers at rest. A number is stored only sealed by the key service (as the CVC is),
//! bound to its row (`sms_delivery.phone:<certificate id>`, `certificate_sale.phone:<order id>`),
//! and erased once it has served (the SMS delivered, the sale activated); its last two digits
//! stay for operators. A database dump holds no number in clear.
//!
//! Rows written before numbers were sealed keep theirs in the `phone` column until
//! [`seal_clear_phones`] seals them (at start-up).

use super::rows::unavailable;
use backbone_certificates::code::visible_tail;
use backbone_certificates::store::StoreError;
use backbone_certificates::{CodeKeys, KeyError, SealedCvc};
use sqlx::{PgPool, Row};
use std::sync::Arc;
use uuid::Uuid;

/// The key service, once the store was given one.
pub(crate) type Keys = Option<Arc<dyn CodeKeys>>;

pub(crate) fn delivery_context(certificate_id: Uuid) -> Vec<u8> {
    [b"sms_delivery.phone:".as_slice(), certificate_id.as_bytes()].concat()
}

pub(crate) fn sale_context(order_id: &str) -> Vec<u8> {
    [b"certificate_sale.phone:".as_slice(), order_id.as_bytes()].concat()
}

pub(crate) fn last2(phone: &str) -> String {
    visible_tail(phone, 2).to_owned()
}

fn keys_of(keys: &Keys) -> Result<&dyn CodeKeys, StoreError> {
    keys.as_deref()
        .ok_or_else(|| StoreError("no key service configured to seal phone numbers".into()))
}

pub(crate) fn seal(keys: &Keys, context: &[u8], phone: &str) -> Result<SealedCvc, StoreError> {
    keys_of(keys)?
        .seal_secret(context, phone)
        .map_err(|e| StoreError(format!("sealing a phone number: {e}")))
}

/// The number of a row: opened from its sealed columns (or the clear one of a row written
/// before numbers were sealed). `None` when there is none, or when the sealed copy does not open
/// under the configured keys (logged; retrying cannot help). The key service being away is an
/// error: retry.
pub(crate) fn open(
    keys: &Keys,
    context: &[u8],
    row: &sqlx::postgres::PgRow,
) -> Result<Option<String>, StoreError> {
    let clear: Option<String> = row.try_get("phone").map_err(unavailable)?;
    let key_id: Option<String> = row.try_get("phone_key_id").map_err(unavailable)?;
    let wrapped: Option<Vec<u8>> = row.try_get("phone_wrapped_key").map_err(unavailable)?;
    let ciphertext: Option<Vec<u8>> = row.try_get("phone_ciphertext").map_err(unavailable)?;
    let (Some(key_id), Some(wrapped_key), Some(ciphertext)) = (key_id, wrapped, ciphertext) else {
        return Ok(clear);
    };
    let sealed = SealedCvc {
        key_id,
        wrapped_key,
        ciphertext,
    };
    match keys_of(keys)?.open_secret(context, &sealed) {
        Ok(phone) => Ok(Some(phone)),
        Err(KeyError::Open) => {
            tracing::error!("a stored phone number does not open under the configured keys");
            Ok(None)
        }
        Err(e @ KeyError::Unavailable(_)) => Err(StoreError(format!("opening a phone number: {e}"))),
    }
}

/// Seals the numbers still stored in clear (rows from before numbers were sealed); returns how
/// many. Safe to run from several instances at once.
pub(crate) async fn seal_clear_phones(pool: &PgPool, keys: &Keys) -> Result<u64, StoreError> {
    let mut sealed = 0;
    let deliveries = sqlx::query("SELECT certificate_id, phone FROM sms_delivery WHERE phone IS NOT NULL")
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    for row in deliveries {
        let id: Uuid = row.try_get("certificate_id").map_err(unavailable)?;
        let phone: String = row.try_get("phone").map_err(unavailable)?;
        let s = seal(keys, &delivery_context(id), &phone)?;
        sealed += sqlx::query(
            "UPDATE sms_delivery SET phone = NULL, phone_last2 = $3, phone_key_id = $4, phone_wrapped_key = $5,
                    phone_ciphertext = $6
              WHERE certificate_id = $1 AND phone = $2",
        )
        .bind(id)
        .bind(&phone)
        .bind(last2(&phone))
        .bind(&s.key_id)
        .bind(&s.wrapped_key)
        .bind(&s.ciphertext)
        .execute(pool)
        .await
        .map_err(unavailable)?
        .rows_affected();
    }
    let sales = sqlx::query("SELECT order_id, phone FROM certificate_sale WHERE phone IS NOT NULL")
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    for row in sales {
        let order_id: String = row.try_get("order_id").map_err(unavailable)?;
        let phone: String = row.try_get("phone").map_err(unavailable)?;
        let s = seal(keys, &sale_context(&order_id), &phone)?;
        sealed += sqlx::query(
            "UPDATE certificate_sale SET phone = NULL, phone_last2 = $3, phone_key_id = $4, phone_wrapped_key = $5,
                    phone_ciphertext = $6
              WHERE order_id = $1 AND phone = $2",
        )
        .bind(&order_id)
        .bind(&phone)
        .bind(last2(&phone))
        .bind(&s.key_id)
        .bind(&s.wrapped_key)
        .bind(&s.ciphertext)
        .execute(pool)
        .await
        .map_err(unavailable)?
        .rows_affected();
    }
    Ok(sealed)
}
