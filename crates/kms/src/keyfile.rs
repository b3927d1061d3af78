//! The local key-file adapter, for development and tests.
//!
//! A key file holds one 32-byte master key as 64 hex digits or 44 base64 characters on one line;
//! blank lines and lines starting with `#` are ignored. Files that others can read are refused:
//! the key opens every sealed CVC. Nothing here ever prints key material, not even in errors.

use crate::envelope::{DataKeyPolicy, EnvelopeCodeKeys};
use crate::master::{fill_random, LocalKeyRing, LocalMasterKey};
use base64::Engine;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Other users may read or write the file (mode shown in octal).
    #[error("key file {path} is accessible to other users (mode {mode:o}); chmod 600 it")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path} does not hold one 32-byte key in hex or base64")]
    Format { path: PathBuf },
    #[error("key file {path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("no configured key file has id {0}")]
    UnknownKeyId(String),
    #[error("random source: {0}")]
    Random(String),
}

/// Where the local adapter finds its keys (`[kms]` in a service's configuration).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalKmsConfig {
    /// The master key that wraps new data keys.
    pub key_file: PathBuf,
    /// Earlier master keys: they still unwrap what they wrapped and never wrap again.
    #[serde(default)]
    pub retired_key_files: Vec<PathBuf>,
    /// Id of the key the lookup and CVC-verifier keys derive from; `None` means the current key.
    /// After a rotation set this to the first key's id: digest keys must not change while stored
    /// digests exist.
    #[serde(default)]
    pub digest_key_id: Option<String>,
    #[serde(default)]
    pub data_keys: DataKeyPolicy,
}

impl LocalKmsConfig {
    pub fn new(key_file: impl Into<PathBuf>) -> Self {
        Self {
            key_file: key_file.into(),
            retired_key_files: Vec::new(),
            digest_key_id: None,
            data_keys: DataKeyPolicy::default(),
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    if mode & 0o070 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "key file is readable by its group");
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), KeyFileError> {
    Ok(())
}

fn parse_key(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    let mut key = Zeroizing::new([0u8; 32]);
    if line.len() == 64 {
        hex::decode_to_slice(line, key.as_mut()).ok()?;
        return Some(key);
    }
    let decoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(line).ok()?);
    if decoded.len() != 32 {
        return None;
    }
    key.copy_from_slice(&decoded);
    Some(key)
}

/// Reads one master key, refusing files that other users can access.
pub fn read_key_file(path: &Path) -> Result<LocalMasterKey, KeyFileError> {
    let meta = std::fs::metadata(path).map_err(io_error(path))?;
    check_permissions(path, &meta)?;
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io_error(path))?);
    let key = parse_key(&text).ok_or_else(|| KeyFileError::Format {
        path: path.to_owned(),
    })?;
    Ok(LocalMasterKey::from_bytes(&key))
}

/// Writes a new random master key (hex) to a file that must not exist yet, readable by its owner
/// only, and returns it.
pub fn generate_key_file(path: &Path) -> Result<LocalMasterKey, KeyFileError> {
    let mut key = Zeroizing::new([0u8; 32]);
    fill_random(key.as_mut()).map_err(|e| KeyFileError::Random(e.to_string()))?;
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists {
                path: path.to_owned(),
            }
        } else {
            io_error(path)(e)
        }
    })?;
    let master = LocalMasterKey::from_bytes(&key);
    let text = Zeroizing::new(format!(
        "# backbone master key {}: 32 bytes, hex\n{}\n",
        master.id(),
        hex::encode(key.as_ref())
    ));
    file.write_all(text.as_bytes()).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))?;
    Ok(master)
}

/// Loads the key files of `config` into a key ring and the [`EnvelopeCodeKeys`] on top of it.
pub fn load_local(config: &LocalKmsConfig) -> Result<EnvelopeCodeKeys, KeyFileError> {
    let current = read_key_file(&config.key_file)?;
    let retired = config
        .retired_key_files
        .iter()
        .map(|p| read_key_file(p))
        .collect::<Result<Vec<_>, _>>()?;
    let ring = LocalKeyRing::new(current, retired);
    let digests = match &config.digest_key_id {
        None => ring.current().digest_keys(),
        Some(id) => ring
            .key(id)
            .ok_or_else(|| KeyFileError::UnknownKeyId(id.clone()))?
            .digest_keys(),
    };
    tracing::info!(current_key_id = %ring.current().id(), "local master keys loaded");
    Ok(EnvelopeCodeKeys::new(Arc::new(ring), digests, config.data_keys))
}
