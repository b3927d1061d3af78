//! Token validation, and the configuration files this repository ships.

use super::*;

/// Tokens of every channel that pass every rule.
fn with_good_tokens() -> Config {
    let mut cfg = Config::default();
    for (channel, token) in [
        (Channel::OnlineStore, "q7Vt2mZr9KxW4pLs8NbY3cHd"),
        (Channel::Pos, "Hs3kP9wQ2zLm7RtV5xNc8BjF"),
        (Channel::Payments, "Zc4nW8qT1vKy6PrM3sXd9GhL"),
        (Channel::BatchLoader, "Mf6tR2yB9wQk4NsV7xLp3JcD"),
        (Channel::Internal, "Wd8pK3nZ6vTq1MyR5sXb9LhC"),
    ] {
        cfg.tokens.insert(channel, SecretString::from(token));
    }
    cfg
}

/// Obvious placeholders, beyond every value this repository ever shipped (`SHIPPED_TOKENS`).
const OBVIOUS: &[&str] = &[
    "CHANGEME-CHANGEME-CHANGEME-CHANGEME",
    "change_me_please_this_is_long_enough",
    "an-example-token-for-the-pos-channel",
    "placeholder-placeholder-placeholder",
    "replace-with-your-own-pos-token-here",
    "<put-the-pos-channel-token-here>-1234",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "000000000000000000000000000000",
    "abababababababababababababababab",
    "pos-token-not-a-secret-but-long-enough",
    "my-dummy-token-for-the-pos-channel",
];

fn placeholders() -> impl Iterator<Item = &'static str> {
    super::SHIPPED_TOKENS.iter().chain(OBVIOUS).copied()
}

#[test]
fn good_tokens_pass() {
    assert_eq!(with_good_tokens().validate(), Ok(()));
}

#[test]
fn validation_refuses_every_placeholder_token_naming_the_setting_not_the_value() {
    for placeholder in placeholders() {
        let mut cfg = with_good_tokens();
        cfg.tokens.insert(Channel::Pos, SecretString::from(placeholder));
        let problems = cfg.validate().expect_err(placeholder);
        assert!(problems.contains("tokens.POS"), "{placeholder}: {problems}");
        assert!(!problems.contains(placeholder), "the value is echoed: {problems}");
    }
}

#[test]
fn validation_refuses_a_placeholder_sms_token() {
    let mut cfg = with_good_tokens();
    cfg.sms.base_url = "https://sms.invalid".into();
    cfg.sms.token = SecretString::from("change-me-sms-provider-token");
    let problems = cfg.validate().expect_err("placeholder SMS token");
    assert!(problems.contains("sms.token"), "{problems}");
    assert!(!problems.contains("change-me"), "{problems}");
}

fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

#[test]
fn the_shipped_example_without_environment_has_no_tokens_and_is_refused() {
    let file = repository_root().join("config/gift-certificates.example.toml");
    // A prefix no variable has: the file alone, as if no environment were set.
    let cfg: Config = backbone_telemetry::load_config(Some(&file), "GIFT_CERTIFICATES_TEST_NO_ENV_")
        .expect("the example parses");
    assert!(cfg.tokens.is_empty(), "the example ships token values");
    let problems = cfg.validate().expect_err("no tokens");
    assert!(problems.contains("tokens: at least one channel"), "{problems}");
}

#[test]
fn the_local_configuration_ships_no_tokens() {
    let file = repository_root().join("config/gift-certificates.local.toml");
    let cfg: Config = backbone_telemetry::load_config(Some(&file), "GIFT_CERTIFICATES_TEST_NO_ENV_")
        .expect("the local configuration parses");
    assert!(
        cfg.tokens.is_empty(),
        "the local configuration ships token values"
    );
    assert!(cfg.sms.token.expose_secret().is_empty());
    assert!(
        !cfg.admin.enabled(),
        "the local configuration ships an admin token"
    );
}

#[test]
fn an_admin_token_is_optional_and_follows_the_token_rules() {
    let mut cfg = with_good_tokens();
    assert!(!cfg.admin.enabled());
    cfg.admin.token = SecretString::from("Jq5wN2xR8tLz4KvB7mPc3HdS");
    assert_eq!(cfg.validate(), Ok(()));

    cfg.admin.token = SecretString::from("Jq5wN2xR8tLz");
    let problems = cfg.validate().expect_err("too short");
    assert!(problems.contains("admin.token"), "{problems}");
    for placeholder in placeholders() {
        cfg.admin.token = SecretString::from(placeholder);
        let problems = cfg.validate().expect_err(placeholder);
        assert!(problems.contains("admin.token"), "{placeholder}: {problems}");
        assert!(!problems.contains(placeholder), "the value is echoed: {problems}");
    }
    // A channel's token must never open the admin API.
    cfg.admin.token = SecretString::from("Hs3kP9wQ2zLm7RtV5xNc8BjF");
    let problems = cfg.validate().expect_err("shared with POS");
    assert!(problems.contains("admin.token"), "{problems}");
}

#[test]
fn the_admin_token_is_read_from_admin_token_and_never_printed() {
    let dir = tempfile_dir();
    let file = dir.join("admin.toml");
    std::fs::write(&file, "[admin]\ntoken = \"Jq5wN2xR8tLz4KvB7mPc3HdS\"\n").expect("written");
    let cfg: Config =
        backbone_telemetry::load_config(Some(&file), "GIFT_CERTIFICATES_TEST_NO_ENV_").expect("parses");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(cfg.admin.token.expose_secret(), "Jq5wN2xR8tLz4KvB7mPc3HdS");
    let printed = format!("{cfg:?} {}", serde_json::to_string(&cfg).expect("serializes"));
    assert!(!printed.contains("Jq5wN2xR8tLz4KvB7mPc3HdS"), "{printed}");
}

/// A directory of this test run's own for files the tests write.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gc-config-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Whether a TOML line assigns a non-empty value to a secret-looking key.
fn assigns_a_secret(section: &str, line: &str) -> bool {
    let Some((key, value)) = line.split_once('=') else {
        return false;
    };
    let key = key.trim().trim_matches('"').to_ascii_lowercase();
    let value = value.trim().trim_matches('"').trim_matches('\'');
    let secret_key = ["token", "secret", "password", "private_key"]
        .iter()
        .any(|s| key.contains(s))
        && !key.ends_with("_file")
        && !key.ends_with("_url");
    !value.is_empty() && (section == "tokens" || section.ends_with(".tokens") || secret_key)
}

#[test]
fn no_committed_configuration_file_holds_a_token_value() {
    let root = repository_root();
    let mut checked = 0;
    for dir in ["config", "deploy", "deploy/prometheus"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            checked += 1;
            let text = std::fs::read_to_string(&path).expect("readable configuration");
            let mut section = String::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.starts_with('#') || line.is_empty() {
                    continue;
                }
                if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                    section = name.trim().to_owned();
                    continue;
                }
                assert!(
                    !assigns_a_secret(&section, line),
                    "{}:{} sets a secret",
                    path.display(),
                    n + 1
                );
            }
        }
    }
    assert!(
        checked >= 2,
        "no configuration files found under {}",
        root.display()
    );
}

#[test]
fn the_secret_scan_finds_what_it_looks_for() {
    assert!(assigns_a_secret("tokens", r#"POS = "anything-at-all""#));
    assert!(assigns_a_secret("crm.generic", r#"token = "abc""#));
    assert!(assigns_a_secret("crm.generic", r#"signing_secret = "abc""#));
    assert!(!assigns_a_secret(
        "crm.kommo",
        r#"token_file = ".stack/kommo.token""#
    ));
    assert!(!assigns_a_secret("sms", r#"base_url = """#));
}
