//! This node's key pair and public identity.
//!
//! A node is identified by its static X25519 public key (the Noise static key), written as 64
//! lowercase hex characters: the `id` of `[nodes.NAME]`. The key file holds the private key and
//! the public key, one hex line each, and is created with mode 0600 and never overwritten.

use crate::item::{hex, unhex};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Errors reading or creating a node key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("node key {path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("no node key at {path} (run `clustersync init` first)")]
    Missing { path: PathBuf },
    #[error(
        "cannot read node key {path}: permission denied (the key is root's: run clustersync as root)"
    )]
    Denied { path: PathBuf },
    #[error("cannot read node key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write node key {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node key {path} is malformed")]
    Malformed { path: PathBuf },
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

/// A node's static key pair.
#[derive(Clone)]
pub struct Identity {
    pub private: [u8; 32],
    pub public: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.id())
    }
}

/// The Noise parameters the key pair is generated with (X25519; the links' suites are in
/// `net::transport::Suite`).
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

impl Identity {
    /// The public id, as written in the config.
    pub fn id(&self) -> String {
        hex(&self.public)
    }

    /// Generate a fresh key pair.
    pub fn generate() -> Result<Identity, IdentityError> {
        let params = NOISE_PARAMS
            .parse()
            .map_err(|e| IdentityError::Generate(format!("{e:?}")))?;
        let kp = snow::Builder::new(params)
            .generate_keypair()
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        let private: [u8; 32] = kp
            .private
            .as_slice()
            .try_into()
            .map_err(|_| IdentityError::Generate("bad private key length".into()))?;
        let public: [u8; 32] = kp
            .public
            .as_slice()
            .try_into()
            .map_err(|_| IdentityError::Generate("bad public key length".into()))?;
        Ok(Identity { private, public })
    }

    /// Create a new key file at `path` (mode 0600); fails if one exists.
    pub fn create(path: &Path) -> Result<Identity, IdentityError> {
        if path.exists() {
            return Err(IdentityError::Exists { path: path.into() });
        }
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| IdentityError::Write {
                    path: path.into(),
                    source,
                })?;
        }
        let ident = Identity::generate()?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => IdentityError::Exists { path: path.into() },
                _ => IdentityError::Write {
                    path: path.into(),
                    source,
                },
            })?;
        let text = format!("{}\n{}\n", hex(&ident.private), hex(&ident.public));
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|source| IdentityError::Write {
                path: path.into(),
                source,
            })?;
        Ok(ident)
    }

    /// Load the key file at `path`.
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => IdentityError::Missing { path: path.into() },
            std::io::ErrorKind::PermissionDenied => IdentityError::Denied { path: path.into() },
            _ => IdentityError::Read {
                path: path.into(),
                source,
            },
        })?;
        let mut lines = text.lines();
        let bad = || IdentityError::Malformed { path: path.into() };
        let private = lines.next().and_then(unhex::<32>).ok_or_else(bad)?;
        let public = lines.next().and_then(unhex::<32>).ok_or_else(bad)?;
        Ok(Identity { private, public })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_load_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        let a = Identity::create(&p).unwrap();
        assert_eq!(a.id().len(), 64);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            Identity::create(&p),
            Err(IdentityError::Exists { .. })
        ));
        let b = Identity::load(&p).unwrap();
        assert_eq!(a.id(), b.id());
    }
}
