//! Single sign-on against a provider we cannot run here, played by wiremock with the documented
//! OpenID Connect shapes (discovery, JWKS, token endpoint) and ID tokens signed by a key made
//! for the run: a good login opens a session with the mapped role; a forged state, a token
//! signed by another key, a wrong nonce, a wrong audience and a person without a mapped role
//! are each refused.

#![allow(clippy::unwrap_used)]

use base64::Engine;
use operator_console::oidc::STATE_COOKIE;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Key {
    kid: &'static str,
    encoding: jsonwebtoken::EncodingKey,
    jwk: Value,
}

fn key(kid: &'static str) -> Key {
    let private = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
    let der = private.to_pkcs1_der().unwrap();
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    Key {
        kid,
        encoding: jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes()),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                    "n": b64(private.n().to_bytes_be()), "e": b64(private.e().to_bytes_be())}),
    }
}

fn id_token(k: &Key, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(k.kid.to_owned());
    jsonwebtoken::encode(&header, claims, &k.encoding).unwrap()
}

struct Console {
    url: String,
    http: reqwest::Client,
    stop: CancellationToken,
}

async fn console(idp: &MockServer) -> Console {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut cfg = operator_console::Config::default();
    cfg.http.secure_cookies = false;
    cfg.crm_sync.url = "http://127.0.0.1:9".into();
    cfg.crm_sync.admin_token = "unused-crm-sync-token-0123".to_owned().into();
    cfg.gift_certificates.url = "http://127.0.0.1:9".into();
    cfg.gift_certificates.admin_token = "unused-gift-token-0123456".to_owned().into();
    cfg.oidc.issuer = idp.uri();
    cfg.oidc.client_id = "console".into();
    cfg.oidc.client_secret = "client-secret-of-the-test".to_owned().into();
    cfg.oidc.redirect_url = format!("{url}/oidc/callback");
    cfg.oidc
        .roles
        .insert("oncall".into(), operator_console::auth::Role::Operator);
    cfg.oidc
        .roles
        .insert("payments-admins".into(), operator_console::auth::Role::Admin);
    cfg.validate().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { operator_console::serve(listener, &cfg, s).await });
    Console {
        url,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        stop,
    }
}

async fn provider(keys: &[&Key]) -> MockServer {
    let idp = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": idp.uri(),
            "authorization_endpoint": format!("{}/authorize", idp.uri()),
            "token_endpoint": format!("{}/token", idp.uri()),
            "jwks_uri": format!("{}/jwks", idp.uri()),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })))
        .mount(&idp)
        .await;
    let jwks: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "keys": jwks })))
        .mount(&idp)
        .await;
    idp
}

/// `/oidc/start`: the provider's URL's query and the state cookie's value.
async fn start(c: &Console) -> (HashMap<String, String>, String) {
    let r = c.http.get(format!("{}/oidc/start", c.url)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let state = cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix(&format!("{STATE_COOKIE}="))
        .unwrap()
        .to_owned();
    let query = reqwest::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    (query, state)
}

fn claims(idp: &MockServer, nonce: &str, roles: Value) -> Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    json!({"iss": idp.uri(), "aud": "console", "sub": "u-1", "iat": now, "exp": now + 300,
           "nonce": nonce, "preferred_username": "bob", "roles": roles})
}

/// The callback with `state` (and the browser's cookie `cookie_state`), the token endpoint
/// answering `token`: the status and the session cookie, if one was set.
async fn callback(
    c: &Console,
    idp: &MockServer,
    state: &str,
    cookie_state: &str,
    token: String,
) -> (u16, Option<String>) {
    // Scoped: this token answers this callback only.
    let _token = Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("code_verifier="))
        .and(body_string_contains("grant_type=authorization_code"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "at", "token_type": "Bearer", "id_token": token})))
        .mount_as_scoped(idp)
        .await;
    let r = c
        .http
        .get(format!("{}/oidc/callback?code=the-code&state={state}", c.url))
        .header("cookie", format!("{STATE_COOKIE}={cookie_state}"))
        .send()
        .await
        .unwrap();
    let session = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("console_session=") && !v.starts_with("console_session=;"))
        .map(|v| v.split(';').next().unwrap().to_owned());
    (r.status().as_u16(), session)
}

#[tokio::test]
async fn a_verified_id_token_opens_a_session_with_the_mapped_role_and_every_forgery_is_refused() {
    // `other` claims the same key id as `good`: only the signature tells them apart.
    let (good, other) = (key("k1"), key("k1"));
    let idp = provider(&[&good]).await;
    let c = console(&idp).await;

    // The login page offers single sign-on; the start carries PKCE and a nonce.
    let page = c
        .http
        .get(format!("{}/login", c.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/oidc/start"), "{page}");
    let (query, state) = start(&c).await;
    assert_eq!(query["state"], state);
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["client_id"], "console");
    assert_eq!(query["redirect_uri"], format!("{}/oidc/callback", c.url));

    // Good: bob holds `oncall` and `payments-admins`; the highest role wins.
    let token = id_token(
        &good,
        &claims(&idp, &query["nonce"], json!(["oncall", "payments-admins"])),
    );
    let (status, session) = callback(&c, &idp, &state, &state, token).await;
    assert_eq!(status, 200);
    let session = session.expect("a session cookie");
    let home = c
        .http
        .get(format!("{}/", c.url))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(home.status(), 200);
    let html = home.text().await.unwrap();
    assert!(
        html.contains("bob") && html.contains("admin"),
        "the session is bob's, as admin"
    );
    // A state is used once.
    let again = id_token(&good, &claims(&idp, &query["nonce"], json!("oncall")));
    assert_eq!(callback(&c, &idp, &state, &state, again).await, (401, None));

    // Each forgery on its own fresh login.
    type Forge = fn(&MockServer, &str, &Key, &Key) -> (String, bool);
    let forgeries: [(&str, Forge); 5] = [
        ("another browser's state", |idp, nonce, good, _| {
            (id_token(good, &claims(idp, nonce, json!("oncall"))), false)
        }),
        ("signed by another key", |idp, nonce, _, other| {
            (id_token(other, &claims(idp, nonce, json!("oncall"))), true)
        }),
        ("another login's nonce", |idp, _, good, _| {
            (
                id_token(good, &claims(idp, "not-the-nonce", json!("oncall"))),
                true,
            )
        }),
        ("for another client", |idp, nonce, good, _| {
            let mut c = claims(idp, nonce, json!("oncall"));
            c["aud"] = json!("someone-else");
            (id_token(good, &c), true)
        }),
        ("no mapped role", |idp, nonce, good, _| {
            (id_token(good, &claims(idp, nonce, json!(["staff"]))), true)
        }),
    ];
    for (what, forge) in forgeries {
        let (query, state) = start(&c).await;
        let (token, same_browser) = forge(&idp, &query["nonce"], &good, &other);
        let cookie = if same_browser {
            state.clone()
        } else {
            "another-browser".to_owned()
        };
        assert_eq!(
            callback(&c, &idp, &state, &cookie, token).await,
            (401, None),
            "{what}"
        );
    }
    c.stop.cancel();
}
