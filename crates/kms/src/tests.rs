#![allow(clippy::unwrap_used)]

use super::*;
use backbone_certificates::code::{Cvc, GiftCode};
use backbone_certificates::ports::{CodeKeys, KeyError, SealedCvc};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEY_A: [u8; 32] = [0x11; 32];
const KEY_B: [u8; 32] = [0x22; 32];

fn keys_with(current: [u8; 32], retired: &[[u8; 32]], digest_root: [u8; 32]) -> EnvelopeCodeKeys {
    let ring = LocalKeyRing::new(
        LocalMasterKey::from_bytes(&current),
        retired.iter().map(LocalMasterKey::from_bytes).collect(),
    );
    EnvelopeCodeKeys::new(
        Arc::new(ring),
        LocalMasterKey::from_bytes(&digest_root).digest_keys(),
        DataKeyPolicy::default(),
    )
}

fn keys(current: [u8; 32]) -> EnvelopeCodeKeys {
    keys_with(current, &[], current)
}

fn code(payload: &[u8; 15]) -> GiftCode {
    GiftCode::from_payload(payload).unwrap()
}

fn cvc(s: &str) -> Cvc {
    Cvc::parse(s).unwrap()
}

#[test]
fn a_sealed_cvc_opens_for_its_certificate() {
    let k = keys(KEY_A);
    let digest = k.code_digest(&code(b"ABCDEFGHJKLMNPQ"));
    for raw in ["123", "0042", "9999"] {
        let sealed = k.seal_cvc(&digest, &cvc(raw)).unwrap();
        assert!(!sealed.ciphertext.windows(raw.len()).any(|w| w == raw.as_bytes()));
        assert_eq!(k.open_cvc(&digest, &sealed).unwrap().expose(), raw);
    }
}

#[test]
fn a_sealed_secret_opens_only_under_its_context() {
    let k = keys(KEY_A);
    let phone = "+79991234567";
    let sealed = k.seal_secret(b"sms_delivery.phone:1", phone).unwrap();
    assert!(!sealed.ciphertext.windows(6).any(|w| w == &phone.as_bytes()[1..7]));
    assert_eq!(k.open_secret(b"sms_delivery.phone:1", &sealed).unwrap(), phone);
    assert!(matches!(
        k.open_secret(b"sms_delivery.phone:2", &sealed),
        Err(KeyError::Open)
    ));
    // A sealed CVC is not a sealed secret, and the other way round.
    let digest = k.code_digest(&code(b"ABCDEFGHJKLMNPQ"));
    let cvc_sealed = k.seal_cvc(&digest, &cvc("1234")).unwrap();
    assert!(matches!(
        k.open_secret(&digest.0, &cvc_sealed),
        Err(KeyError::Open)
    ));
    // Another master key cannot open it.
    assert!(keys(KEY_B).open_secret(b"sms_delivery.phone:1", &sealed).is_err());
}

#[test]
fn sealing_twice_gives_different_ciphertexts() {
    let k = keys(KEY_A);
    let digest = k.code_digest(&code(b"ABCDEFGHJKLMNPQ"));
    let a = k.seal_cvc(&digest, &cvc("1234")).unwrap();
    let b = k.seal_cvc(&digest, &cvc("1234")).unwrap();
    assert_ne!(a.ciphertext, b.ciphertext, "nonces must differ");
}

#[test]
fn any_tampering_is_refused() {
    let k = keys(KEY_A);
    let digest = k.code_digest(&code(b"ABCDEFGHJKLMNPQ"));
    let sealed = k.seal_cvc(&digest, &cvc("4821")).unwrap();
    for i in 0..sealed.ciphertext.len() {
        let mut t = sealed.clone();
        t.ciphertext[i] ^= 0x01;
        assert!(
            matches!(k.open_cvc(&digest, &t), Err(KeyError::Open)),
            "ciphertext byte {i}"
        );
    }
    for i in 0..sealed.wrapped_key.len() {
        let mut t = sealed.clone();
        t.wrapped_key[i] ^= 0x80;
        assert!(
            matches!(k.open_cvc(&digest, &t), Err(KeyError::Open)),
            "wrapped key byte {i}"
        );
    }
    let mut truncated = sealed.clone();
    truncated.ciphertext.truncate(20);
    assert!(matches!(k.open_cvc(&digest, &truncated), Err(KeyError::Open)));
    let mut renamed = sealed.clone();
    renamed.key_id = "local-0000000000000000".into();
    assert!(matches!(k.open_cvc(&digest, &renamed), Err(KeyError::Open)));
    assert_eq!(k.open_cvc(&digest, &sealed).unwrap().expose(), "4821");
}

#[test]
fn a_cvc_does_not_open_for_another_certificate() {
    let k = keys(KEY_A);
    let mine = k.code_digest(&code(b"ABCDEFGHJKLMNPQ"));
    let other = k.code_digest(&code(b"ABCDEFGHJKLMNPR"));
    let sealed = k.seal_cvc(&mine, &cvc("4821")).unwrap();
    assert!(matches!(k.open_cvc(&other, &sealed), Err(KeyError::Open)));
}

#[test]
fn another_master_key_cannot_open() {
    let a = keys(KEY_A);
    let b = keys(KEY_B);
    let digest = a.code_digest(&code(b"ABCDEFGHJKLMNPQ"));
    let sealed = a.seal_cvc(&digest, &cvc("4821")).unwrap();
    assert!(matches!(b.open_cvc(&digest, &sealed), Err(KeyError::Open)));
    // Even when the key id is forged to B's, A's wrapped key does not unwrap under B.
    let mut forged = sealed.clone();
    forged.key_id = LocalMasterKey::from_bytes(&KEY_B).id().to_owned();
    assert!(matches!(b.open_cvc(&digest, &forged), Err(KeyError::Open)));
}

#[test]
fn after_rotation_old_seals_open_and_new_seals_use_the_new_key() {
    let old = keys(KEY_A);
    let digest = old.code_digest(&code(b"ABCDEFGHJKLMNPQ"));
    let before = old.seal_cvc(&digest, &cvc("4821")).unwrap();

    // B is current, A retired; digest keys stay derived from A.
    let rotated = keys_with(KEY_B, &[KEY_A], KEY_A);
    assert_eq!(rotated.code_digest(&code(b"ABCDEFGHJKLMNPQ")), digest);
    assert_eq!(rotated.open_cvc(&digest, &before).unwrap().expose(), "4821");
    let after = rotated.seal_cvc(&digest, &cvc("7777")).unwrap();
    assert_eq!(after.key_id, LocalMasterKey::from_bytes(&KEY_B).id());
    assert_ne!(after.key_id, before.key_id);

    // Once A is destroyed, what it wrapped no longer opens; what B wrapped still does.
    let a_destroyed = keys_with(KEY_B, &[], KEY_A);
    assert!(matches!(
        a_destroyed.open_cvc(&digest, &before),
        Err(KeyError::Open)
    ));
    assert_eq!(a_destroyed.open_cvc(&digest, &after).unwrap().expose(), "7777");
}

#[test]
fn verifiers_bind_the_cvc_to_its_certificate() {
    let k = keys(KEY_A);
    let mine = k.code_digest(&code(b"ABCDEFGHJKLMNPQ"));
    let other = k.code_digest(&code(b"ZZ23456789ABCDE"));
    let verifier = k.cvc_verifier(&mine, &cvc("4821"));
    assert!(k.verify_cvc(&mine, &cvc("4821"), &verifier));
    assert!(!k.verify_cvc(&mine, &cvc("4822"), &verifier));
    assert!(!k.verify_cvc(&other, &cvc("4821"), &verifier));
    assert!(!k.verify_cvc(&mine, &cvc("4821"), &verifier[..31]));
    assert!(!k.verify_cvc(&mine, &cvc("4821"), &[]));
    // Another key set's verifier does not verify here.
    let b = keys(KEY_B);
    assert!(!k.verify_cvc(&mine, &cvc("4821"), &b.cvc_verifier(&mine, &cvc("4821"))));
}

#[test]
fn digests_are_deterministic_keyed_and_distinct_from_verifiers() {
    let a1 = keys(KEY_A);
    let a2 = keys(KEY_A);
    let b = keys(KEY_B);
    let c = code(b"ABCDEFGHJKLMNPQ");
    let digest = a1.code_digest(&c);
    assert_eq!(a2.code_digest(&c), digest);
    assert_ne!(b.code_digest(&c), digest);
    assert_ne!(a1.code_digest(&code(b"ABCDEFGHJKLMNPR")), digest);
    // A parsed, grouped, lower-case code digests like the normalised one.
    let parsed = GiftCode::parse(&c.grouped().to_lowercase()).unwrap();
    assert_eq!(a1.code_digest(&parsed), digest);
}

#[derive(Debug)]
struct CountingMaster {
    inner: LocalKeyRing,
    wraps: AtomicUsize,
    unwraps: AtomicUsize,
}

impl MasterKey for CountingMaster {
    fn current_key_id(&self) -> &str {
        self.inner.current_key_id()
    }
    fn wrap(&self, key: &DataKey) -> Result<WrappedKey, KeyError> {
        self.wraps.fetch_add(1, Ordering::SeqCst);
        self.inner.wrap(key)
    }
    fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(key_id, wrapped)
    }
}

#[test]
fn data_keys_are_cached_and_rotated_by_use_count() {
    let master = Arc::new(CountingMaster {
        inner: LocalKeyRing::new(LocalMasterKey::from_bytes(&KEY_A), vec![]),
        wraps: AtomicUsize::new(0),
        unwraps: AtomicUsize::new(0),
    });
    let policy = DataKeyPolicy {
        max_uses: 3,
        max_age: Duration::from_secs(3600),
    };
    let k = EnvelopeCodeKeys::new(master.clone(), DigestKeys::derive(&KEY_A), policy);
    let digest = k.code_digest(&code(b"ABCDEFGHJKLMNPQ"));
    let sealed: Vec<SealedCvc> = (0..7)
        .map(|_| k.seal_cvc(&digest, &cvc("123")).unwrap())
        .collect();
    assert_eq!(master.wraps.load(Ordering::SeqCst), 3, "7 seals at 3 per key");
    assert_eq!(sealed[0].wrapped_key, sealed[2].wrapped_key);
    assert_ne!(sealed[2].wrapped_key, sealed[3].wrapped_key);
    for s in &sealed {
        assert_eq!(k.open_cvc(&digest, s).unwrap().expose(), "123");
    }
    assert_eq!(
        master.unwraps.load(Ordering::SeqCst),
        3,
        "one unwrap per data key"
    );
    k.rotate_data_key();
    k.seal_cvc(&digest, &cvc("123")).unwrap();
    assert_eq!(master.wraps.load(Ordering::SeqCst), 4);
}

#[test]
fn debug_output_never_contains_key_material() {
    let k = keys_with(KEY_B, &[KEY_A], KEY_A);
    let master = LocalMasterKey::from_bytes(&KEY_A);
    let data = DataKey::from_bytes(KEY_B);
    let printed = [
        format!("{k:?}"),
        format!("{master:?}"),
        format!("{data:?}"),
        format!("{:?}", DigestKeys::derive(&KEY_A)),
        format!(
            "{:?}",
            LocalKeyRing::new(LocalMasterKey::from_bytes(&KEY_B), vec![master])
        ),
    ];
    for p in &printed {
        for needle in ["1111", "2222", "17, 17", "34, 34", "ERER", "IiIi"] {
            assert!(!p.contains(needle), "{p} contains {needle}");
        }
    }
    assert!(printed[0].contains(LocalMasterKey::from_bytes(&KEY_B).id()));
    assert_eq!(printed[2], "DataKey(***)");
}

fn write_key(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn key_files_in_hex_and_base64_load_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let hex_path = write_key(
        dir.path(),
        "hex.key",
        &format!("# comment\n{}\n", hex::encode(KEY_A)),
        0o600,
    );
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, KEY_A);
    let b64_path = write_key(dir.path(), "b64.key", &b64, 0o400);
    let from_hex = read_key_file(&hex_path).unwrap();
    let from_b64 = read_key_file(&b64_path).unwrap();
    assert_eq!(from_hex.id(), from_b64.id());
    assert_eq!(from_hex.id(), LocalMasterKey::from_bytes(&KEY_A).id());
}

#[test]
fn unreadable_shapes_and_open_permissions_are_refused_without_echoing_content() {
    let dir = tempfile::tempdir().unwrap();
    let world = write_key(dir.path(), "world.key", &hex::encode(KEY_A), 0o644);
    let err = read_key_file(&world).unwrap_err();
    assert!(
        matches!(err, KeyFileError::Permissions { mode: 0o644, .. }),
        "{err}"
    );
    assert!(!err.to_string().contains("1111"));
    let writable = write_key(dir.path(), "writable.key", &hex::encode(KEY_A), 0o602);
    assert!(matches!(
        read_key_file(&writable),
        Err(KeyFileError::Permissions { .. })
    ));
    // Group access is allowed with a warning (mounted secrets are often 0640).
    let group = write_key(dir.path(), "group.key", &hex::encode(KEY_A), 0o640);
    assert_eq!(
        read_key_file(&group).unwrap().id(),
        LocalMasterKey::from_bytes(&KEY_A).id()
    );

    for (name, text) in [
        ("short.key", "abcdef".to_owned()),
        (
            "two.key",
            format!("{}\n{}\n", hex::encode(KEY_A), hex::encode(KEY_B)),
        ),
        ("b64short.key", "c2VjcmV0c2VjcmV0".to_owned()),
        ("nothex.key", "zz".repeat(32)),
    ] {
        let path = write_key(dir.path(), name, &text, 0o600);
        let err = read_key_file(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Format { .. }), "{name}: {err}");
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("1111") && !shown.contains("zzzz") && !shown.contains("c2Vj"),
            "{shown}"
        );
    }
}

#[test]
fn generated_key_files_are_private_load_back_and_are_never_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let generated = generate_key_file(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(read_key_file(&path).unwrap().id(), generated.id());
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(
        generate_key_file(&path),
        Err(KeyFileError::Exists { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let other = generate_key_file(&dir.path().join("second.key")).unwrap();
    assert_ne!(other.id(), generated.id());
}

#[test]
fn load_local_rotates_with_a_fixed_digest_key() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.key");
    let second = dir.path().join("second.key");
    let first_id = generate_key_file(&first).unwrap().id().to_owned();
    generate_key_file(&second).unwrap();

    let before = load_local(&LocalKmsConfig::new(&first)).unwrap();
    let digest = before.code_digest(&code(b"ABCDEFGHJKLMNPQ"));
    let sealed = before.seal_cvc(&digest, &cvc("4821")).unwrap();
    let verifier = before.cvc_verifier(&digest, &cvc("4821"));

    let mut config = LocalKmsConfig::new(&second);
    config.retired_key_files = vec![first.clone()];
    config.digest_key_id = Some(first_id);
    let after = load_local(&config).unwrap();
    assert_eq!(after.code_digest(&code(b"ABCDEFGHJKLMNPQ")), digest);
    assert!(after.verify_cvc(&digest, &cvc("4821"), &verifier));
    assert_eq!(after.open_cvc(&digest, &sealed).unwrap().expose(), "4821");

    config.digest_key_id = Some("local-ffffffffffffffff".into());
    assert!(matches!(load_local(&config), Err(KeyFileError::UnknownKeyId(_))));
}

#[test]
fn configuration_reads_with_defaults() {
    let minimal: LocalKmsConfig = serde_json::from_str(r#"{"key_file": "keys/master.key"}"#).unwrap();
    assert_eq!(minimal, LocalKmsConfig::new("keys/master.key"));
    let full: LocalKmsConfig = serde_json::from_str(
        r#"{"key_file": "k2", "retired_key_files": ["k1"], "digest_key_id": "local-0011223344556677",
            "data_keys": {"max_uses": 10, "max_age": "90s"}}"#,
    )
    .unwrap();
    assert_eq!(full.retired_key_files, vec![std::path::PathBuf::from("k1")]);
    assert_eq!(full.digest_key_id.as_deref(), Some("local-0011223344556677"));
    assert_eq!(
        full.data_keys,
        DataKeyPolicy {
            max_uses: 10,
            max_age: Duration::from_secs(90)
        }
    );
    assert!(serde_json::from_str::<LocalKmsConfig>(r#"{"key_file": "k", "key": "inline"}"#).is_err());
}
