//! Webhooks back: every change to a contact or task of a dialect with a target is announced to
//! that target in the vendor's shape ([`bodies`]), in a task of its own, so the API answer never
//! waits for it.
//!
//! - Each attempt has a short timeout (2 s unless the target says otherwise). Deliveries run
//!   concurrently, so two quick changes may arrive out of order, as the vendors' may.
//! - Bitrix24, Kommo and the generic CRM try once: a failed delivery is counted, never resent
//!   (Bitrix24 and Kommo do not retry either).
//! - Salesforce tries up to [`SALESFORCE_ATTEMPTS`] times, 250 ms and then 500 ms apart, as its
//!   Outbound Messages retry with growing intervals (for up to 24 h there); only an answer that
//!   carries `<Ack>true</Ack>` counts as delivered.
//! - The generic CRM signs each attempt anew (fresh timestamp and nonce) with the target's
//!   secret; the body, and with it the `deliveryId`, stays the same.
//! - [`Hub::notify`] sends one delivery several times at once, for duplicate-delivery tests.

mod bodies;

use crate::people::{Change, Entity};
use crate::Dialect;
use backbone_crm::signing::{self, SignedParts};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const SALESFORCE_ATTEMPTS: u32 = 3;
/// The most copies [`Hub::notify`] sends at once.
pub const MAX_NOTIFY_TIMES: usize = 500;
const MAX_URL_LEN: usize = 2048;
const MAX_CREDENTIAL_LEN: usize = 256;

/// Where a dialect sends its webhooks, with the credentials it puts in them: generic `secret`
/// (required); Bitrix24 `application_token` (required), `member_id`, `domain`; Kommo
/// `account_id`, `subdomain`; Salesforce `organization_id`. Missing optional ones take
/// defaults. Never shown back.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    pub url: String,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub member_id: Option<String>,
    #[serde(default)]
    pub application_token: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default, deserialize_with = "number_or_text")]
    pub account_id: Option<u64>,
    #[serde(default)]
    pub subdomain: Option<String>,
    #[serde(default)]
    pub organization_id: Option<String>,
    /// Timeout of one attempt, 1..=60000 ms.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

fn number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Number(n)) => Ok(Some(n)),
        Some(Raw::Text(t)) => t
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("account_id must be a number")),
    }
}

/// Why a target is refused; never repeats a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WebhookError(pub &'static str);

/// The credentials of one dialect's webhooks.
pub(crate) enum Credentials {
    Generic {
        secret: String,
    },
    Bitrix24 {
        member_id: String,
        application_token: String,
        domain: String,
    },
    Kommo {
        account_id: u64,
        subdomain: String,
    },
    Salesforce {
        organization_id: String,
    },
}

pub(crate) struct Target {
    url: reqwest::Url,
    credentials: Credentials,
    timeout: Duration,
}

fn credential(v: Option<String>, default: &str) -> Result<String, WebhookError> {
    let v = v.unwrap_or_else(|| default.to_owned());
    if v.is_empty() || v.len() > MAX_CREDENTIAL_LEN || v.chars().any(char::is_control) {
        return Err(WebhookError(
            "a credential must be 1 to 256 characters without control characters",
        ));
    }
    Ok(v)
}

impl WebhookTarget {
    fn validate(self, d: Dialect) -> Result<Target, WebhookError> {
        if self.url.len() > MAX_URL_LEN {
            return Err(WebhookError("url is longer than 2048 characters"));
        }
        let url = reqwest::Url::parse(&self.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or(WebhookError("url must be an absolute http or https URL"))?;
        let timeout = match self.timeout_ms {
            None => DEFAULT_TIMEOUT,
            Some(ms @ 1..=60_000) => Duration::from_millis(ms),
            Some(_) => return Err(WebhookError("timeout_ms must be within 1..=60000")),
        };
        let credentials = match d {
            Dialect::Generic => Credentials::Generic {
                secret: credential(
                    Some(
                        self.secret
                            .ok_or(WebhookError("the generic dialect needs a secret"))?,
                    ),
                    "",
                )?,
            },
            Dialect::Bitrix24 => Credentials::Bitrix24 {
                application_token: credential(
                    Some(
                        self.application_token
                            .ok_or(WebhookError("bitrix24 needs an application_token"))?,
                    ),
                    "",
                )?,
                member_id: credential(self.member_id, "crm-sim")?,
                domain: credential(self.domain, "crm-sim.bitrix24.local")?,
            },
            Dialect::Kommo => Credentials::Kommo {
                account_id: self.account_id.unwrap_or(7_039_099),
                subdomain: credential(self.subdomain, "crm-sim")?,
            },
            Dialect::Salesforce => {
                let org = credential(self.organization_id, "00D000000000001AAA")?;
                if !matches!(org.len(), 15 | 18) || !org.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(WebhookError("organization_id must be a 15 or 18 character id"));
                }
                Credentials::Salesforce { organization_id: org }
            }
        };
        Ok(Target {
            url,
            credentials,
            timeout,
        })
    }
}

/// What one dialect's webhooks have done.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookStats {
    /// A target is set.
    pub configured: bool,
    /// Deliveries the target acknowledged.
    pub sent: u64,
    /// Deliveries that failed (after the retries, for Salesforce).
    pub failed: u64,
    /// HTTP requests made, retries included.
    pub attempts: u64,
    /// The HTTP status of the latest attempt that got an answer.
    pub last_status: Option<u16>,
    /// Why the latest failed attempt failed: `status`, `timeout`, `connect`, `no_ack`, `other`.
    pub last_error: Option<String>,
}

/// One prepared delivery: the same bytes every time it is sent.
pub(crate) struct Delivery {
    content_type: &'static str,
    body: Bytes,
}

#[derive(Default)]
struct State {
    targets: HashMap<Dialect, Arc<Target>>,
    stats: HashMap<Dialect, WebhookStats>,
    /// Salesforce notification ids handed out.
    notifications: u64,
}

pub(crate) struct Hub {
    client: reqwest::Client,
    state: Mutex<State>,
}

/// The answer to one attempt: the status if there was one, and whether it was a success.
type Attempt = (Option<u16>, Result<(), &'static str>);

impl Hub {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Self {
            client,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set(&self, d: Dialect, target: WebhookTarget) -> Result<(), WebhookError> {
        let target = target.validate(d)?;
        self.lock().targets.insert(d, Arc::new(target));
        Ok(())
    }

    pub fn clear(&self, d: Dialect) {
        self.lock().targets.remove(&d);
    }

    pub fn stats(&self) -> BTreeMap<Dialect, WebhookStats> {
        let s = self.lock();
        Dialect::ALL
            .into_iter()
            .map(|d| {
                let mut st = s.stats.get(&d).cloned().unwrap_or_default();
                st.configured = s.targets.contains_key(&d);
                (d, st)
            })
            .collect()
    }

    /// The target and the delivery announcing `change`, if the dialect has a target.
    fn prepare(&self, d: Dialect, change: &Change) -> Option<(Arc<Target>, Delivery)> {
        let mut s = self.lock();
        let target = s.targets.get(&d)?.clone();
        let notification = if d == Dialect::Salesforce {
            s.notifications += 1;
            s.notifications
        } else {
            0
        };
        drop(s);
        let delivery = bodies::delivery(&target.credentials, change, notification);
        Some((target, delivery))
    }

    /// Sends the webhook of one change in the background, if the dialect has a target.
    pub fn announce(self: &Arc<Self>, d: Dialect, change: &Change) {
        let Some((target, delivery)) = self.prepare(d, change) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.account(d, &[(None, Err("other"))]);
            return;
        };
        let hub = Arc::clone(self);
        let attempts = if d == Dialect::Salesforce {
            SALESFORCE_ATTEMPTS
        } else {
            1
        };
        runtime.spawn(async move {
            let mut tried = Vec::new();
            for n in 0..attempts {
                if n > 0 {
                    tokio::time::sleep(Duration::from_millis(250 << (n - 1))).await;
                }
                let attempt = hub.attempt(&target, &delivery).await;
                let ok = attempt.1.is_ok();
                tried.push(attempt);
                if ok {
                    break;
                }
            }
            hub.account(d, &tried);
        });
    }

    /// Sends the delivery announcing `change` `times` times at once, one attempt each; the
    /// statuses received, in the order sent (`None`: no answer). `None` without a target.
    pub async fn notify(&self, d: Dialect, change: &Change, times: usize) -> Option<Vec<Option<u16>>> {
        let (target, delivery) = self.prepare(d, change)?;
        let delivery = Arc::new(delivery);
        let mut handles = Vec::with_capacity(times);
        for _ in 0..times {
            let (client, target, delivery) = (self.client.clone(), target.clone(), delivery.clone());
            handles.push(tokio::spawn(
                async move { attempt(&client, &target, &delivery).await },
            ));
        }
        let mut statuses = Vec::with_capacity(times);
        for h in handles {
            let attempt = h.await.unwrap_or((None, Err("other")));
            statuses.push(attempt.0);
            self.account(d, &[attempt]);
        }
        Some(statuses)
    }

    async fn attempt(&self, target: &Target, delivery: &Delivery) -> Attempt {
        attempt(&self.client, target, delivery).await
    }

    /// Counts one delivery made of these attempts.
    fn account(&self, d: Dialect, attempts: &[Attempt]) {
        let mut s = self.lock();
        let st = s.stats.entry(d).or_default();
        st.attempts += attempts.len() as u64;
        for (status, outcome) in attempts {
            if status.is_some() {
                st.last_status = *status;
            }
            st.last_error = outcome.err().map(str::to_owned);
        }
        if attempts.last().is_some_and(|a| a.1.is_ok()) {
            st.sent += 1;
        } else {
            st.failed += 1;
        }
    }
}

async fn attempt(client: &reqwest::Client, target: &Target, delivery: &Delivery) -> Attempt {
    let mut req = client
        .post(target.url.clone())
        .timeout(target.timeout)
        .header("content-type", delivery.content_type);
    match &target.credentials {
        Credentials::Generic { secret } => {
            let path = target.url.path();
            let path_and_query = match target.url.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            };
            let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
            let nonce = signing::new_nonce();
            let signature = signing::sign(
                secret.as_bytes(),
                &SignedParts {
                    method: "POST",
                    target: &path_and_query,
                    timestamp: &timestamp,
                    nonce: &nonce,
                    body: &delivery.body,
                },
            );
            req = req
                .header(signing::TIMESTAMP_HEADER, timestamp)
                .header(signing::NONCE_HEADER, nonce)
                .header(signing::SIGNATURE_HEADER, signature);
        }
        Credentials::Salesforce { .. } => req = req.header("soapaction", "\"\""),
        Credentials::Bitrix24 { .. } | Credentials::Kommo { .. } => {}
    }
    let resp = match req.body(delivery.body.clone()).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return (None, Err("timeout")),
        Err(e) if e.is_connect() => return (None, Err("connect")),
        Err(_) => return (None, Err("other")),
    };
    let status = resp.status();
    let code = Some(status.as_u16());
    if !status.is_success() {
        return (code, Err("status"));
    }
    if let Credentials::Salesforce { .. } = target.credentials {
        let acked = match resp.text().await {
            Ok(body) => body.contains("Ack>true</"),
            Err(e) if e.is_timeout() => return (code, Err("timeout")),
            Err(_) => false,
        };
        if !acked {
            return (code, Err("no_ack"));
        }
    }
    (code, Ok(()))
}

/// The change a repeated notification announces: the record as it is now.
pub(crate) fn current(
    entity: Entity,
    crm_id: &str,
    external_id: Option<String>,
    at: time::OffsetDateTime,
) -> Change {
    Change {
        entity,
        created: false,
        crm_id: crm_id.to_owned(),
        external_id,
        at,
    }
}

impl crate::Sim {
    /// From now on, every change to a contact or task of dialect `d` sends a webhook to
    /// `target`.
    pub fn set_webhook(&self, d: Dialect, target: WebhookTarget) -> Result<(), WebhookError> {
        self.hooks.set(d, target)
    }

    /// Dialect `d` sends no more webhooks.
    pub fn clear_webhook(&self, d: Dialect) {
        self.hooks.clear(d);
    }

    /// Every dialect's webhook counters.
    pub fn webhook_stats(&self) -> BTreeMap<Dialect, WebhookStats> {
        self.hooks.stats()
    }
}
