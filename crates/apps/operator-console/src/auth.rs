//! Who may do what: users with argon2 password hashes, the three roles, sessions held in memory
//! (an opaque cookie; the server keeps who it is), a CSRF token per session, and failed logins
//! limited per user name.

use crate::config::User;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use governor::{DefaultKeyedRateLimiter, Quota};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "console_session";
/// The cookie of the login form's CSRF token (before there is a session).
pub const LOGIN_COOKIE: &str = "console_login";

/// What a person may do; each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Looks: overview, dead letters, traces, conflicts, certificates.
    Viewer,
    /// Acts on failures: replays dead letters, resolves conflicts, requeues SMS.
    Operator,
    /// Changes money: cancels certificates.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// 1 to 64 of `a-z A-Z 0-9 . _ @ -`: a name that is safe in a header, a log and an audit row.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// An argon2id PHC string of `password` with a fresh salt (`operator-console hash-password`).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A fresh random token: 32 bytes, hex.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Equal in constant time.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// One logged-in person.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// Every form of this session carries it back.
    pub csrf: String,
    expires: Instant,
}

/// Why a login failed; the page says the same for every one of them.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    Refused,
    /// Too many failed logins for this name: wait.
    Throttled,
}

pub struct Accounts {
    users: HashMap<String, (Role, String)>,
    sessions: Mutex<HashMap<String, Session>>,
    /// Login attempts per user name.
    failures: DefaultKeyedRateLimiter<String>,
    ttl: Duration,
    /// Verified against when the name is unknown, so a miss costs what a hit costs.
    decoy: String,
}

impl Accounts {
    pub fn new(users: &[User], ttl: Duration, logins_per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(logins_per_minute).unwrap_or(NonZeroU32::MIN);
        Self {
            users: users
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        (u.role, u.password_hash.expose_secret().to_owned()),
                    )
                })
                .collect(),
            sessions: Mutex::new(HashMap::new()),
            failures: governor::RateLimiter::keyed(Quota::per_minute(per_minute)),
            ttl,
            decoy: hash_password(&random_token()).unwrap_or_default(),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks the password (argon2, on a blocking thread) and opens a session: its cookie value
    /// and the session. The caller asks [`Accounts::may_try`] first.
    pub async fn login(&self, name: &str, password: &str) -> Result<(String, Session), LoginError> {
        let known = self.users.get(name).cloned();
        let hash = known
            .as_ref()
            .map_or_else(|| self.decoy.clone(), |(_, h)| h.clone());
        let password = password.to_owned();
        let verified = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false);
        match (known, verified) {
            (Some((role, _)), true) => Ok(self.open(name, role)),
            _ => Err(LoginError::Refused),
        }
    }

    /// A new session for a person already identified (by password or by the OIDC provider):
    /// its cookie value and the session.
    pub fn open(&self, name: &str, role: Role) -> (String, Session) {
        let session = Session {
            user: name.to_owned(),
            role,
            csrf: random_token(),
            expires: Instant::now() + self.ttl,
        };
        let id = random_token();
        let mut sessions = self.sessions();
        sessions.retain(|_, s| s.expires > Instant::now());
        sessions.insert(id.clone(), session.clone());
        (id, session)
    }

    /// Whether `name` may try a login now; each call that says yes spends one of the minute's
    /// attempts, so a burst is cut at the limit whatever its concurrency.
    pub fn may_try(&self, name: &str) -> Result<(), LoginError> {
        self.failures
            .check_key(&name.to_owned())
            .map_err(|_| LoginError::Throttled)
    }

    /// The live session of a cookie value.
    pub fn session(&self, id: &str) -> Option<Session> {
        let mut sessions = self.sessions();
        match sessions.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn logout(&self, id: &str) {
        self.sessions().remove(id);
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Path=/, `Secure` when asked.
pub fn set_cookie(name: &str, value: &str, max_age: Option<Duration>, secure: bool) -> String {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    match max_age {
        Some(age) => c.push_str(&format!("; Max-Age={}", age.as_secs())),
        None => c.push_str("; Max-Age=0"),
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn accounts(per_minute: u32) -> Accounts {
        let users = [User {
            name: "alice".into(),
            role: Role::Operator,
            password_hash: SecretString::from(hash_password("correct horse").expect("hash")),
        }];
        Accounts::new(&users, Duration::from_secs(60), per_minute)
    }

    #[tokio::test]
    async fn the_right_password_opens_a_session_and_a_wrong_one_does_not() {
        let a = accounts(5);
        assert_eq!(a.login("alice", "wrong").await.unwrap_err(), LoginError::Refused);
        assert_eq!(
            a.login("bob", "correct horse").await.unwrap_err(),
            LoginError::Refused
        );
        let (id, s) = a.login("alice", "correct horse").await.expect("login");
        assert_eq!((s.user.as_str(), s.role), ("alice", Role::Operator));
        assert_eq!(a.session(&id).map(|s| s.csrf), Some(s.csrf.clone()));
        assert_ne!(id, s.csrf, "the cookie and the form token differ");
        a.logout(&id);
        assert!(a.session(&id).is_none());
        assert!(a.session("forged").is_none());
    }

    #[test]
    fn a_burst_of_logins_for_one_name_is_cut_at_the_limit() {
        let a = accounts(3);
        let allowed = (0..10).filter(|_| a.may_try("alice").is_ok()).count();
        assert_eq!(allowed, 3);
        assert!(a.may_try("bob").is_ok(), "another name has its own budget");
    }

    #[test]
    fn roles_are_ordered_and_names_are_checked() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert!(valid_name("alice.b@example-1"));
        assert!(!valid_name("") && !valid_name("a b") && !valid_name(&"a".repeat(65)));
    }

    #[test]
    fn cookies_are_read_by_name_and_written_strict() {
        let h = Some("a=1; console_session=abc; b=2");
        assert_eq!(cookie(h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(h, "missing"), None);
        let set = set_cookie(SESSION_COOKIE, "abc", Some(Duration::from_secs(60)), true);
        assert_eq!(
            set,
            "console_session=abc; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
