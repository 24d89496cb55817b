//! Files in the data directory that hold secrets: the JWT signing key and the initial admin
//! password. Both are created with mode 0600 and never logged.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const JWT_SECRET_FILE: &str = "jwt-secret";
pub const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";
const SECRET_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read or write {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is too short to be a signing key (delete it to generate a new one)")]
    ShortKey { path: PathBuf },
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

/// Creates the data directory (0700) if needed. An existing one that group or others may
/// use is tightened to owner-only, as it would have been created, and the change logged.
pub fn ensure_data_dir(dir: &Path) -> Result<(), SecretError> {
    let err = |source| SecretError::DataDir {
        path: dir.to_owned(),
        source,
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let meta = fs::metadata(dir).map_err(err)?;
    if !meta.is_dir() {
        return Err(err(std::io::Error::other("not a directory")));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        let tight = mode & 0o700;
        fs::set_permissions(dir, fs::Permissions::from_mode(tight)).map_err(|e| {
            err(std::io::Error::other(format!(
                "it is open to group or others (mode {mode:04o}) and cannot be set to {tight:04o}: {e}"
            )))
        })?;
        tracing::warn!(
            dir = %dir.display(),
            "data directory was open to group or others (mode {mode:04o}); mode set to {tight:04o}"
        );
    }
    Ok(())
}

/// Loads the JWT signing key, generating it on first start.
pub fn load_or_create_jwt_secret(dir: &Path) -> Result<Vec<u8>, SecretError> {
    let path = dir.join(JWT_SECRET_FILE);
    let file_err = |source| SecretError::File {
        path: path.clone(),
        source,
    };
    match fs::read(&path) {
        Ok(bytes) if bytes.len() >= 32 => {
            let mode = fs::metadata(&path).map_err(file_err)?.permissions().mode();
            if mode & 0o077 != 0 {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(file_err)?;
                tracing::warn!(file = %path.display(), "signing key was readable by others; mode reset to 0600");
            }
            Ok(bytes)
        }
        Ok(_) => Err(SecretError::ShortKey { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = random_bytes(SECRET_LEN)?;
            write_private(&path, &secret).map_err(file_err)?;
            Ok(secret)
        }
        Err(e) => Err(file_err(e)),
    }
}

/// Writes the generated admin password where only the owner can read it.
pub fn write_initial_password(dir: &Path, password: &str) -> Result<PathBuf, SecretError> {
    let path = dir.join(INITIAL_PASSWORD_FILE);
    write_private(&path, format!("{password}\n").as_bytes()).map_err(|source| {
        SecretError::File {
            path: path.clone(),
            source,
        }
    })?;
    Ok(path)
}

/// Writes `bytes` to a new file with mode 0600 (replacing a stale one), synced to disk.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

pub fn random_bytes(n: usize) -> Result<Vec<u8>, SecretError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(buf)
}

/// A random 24-character password from an unambiguous alphabet (~140 bits).
pub fn random_password() -> Result<String, SecretError> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    // Rejection sampling keeps the distribution uniform.
    let limit = 256 - 256 % ALPHABET.len();
    let mut out = String::with_capacity(24);
    while out.len() < 24 {
        for b in random_bytes(64)? {
            if (b as usize) < limit && out.len() < 24 {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_created_private_and_stable() {
        let dir = std::env::temp_dir().join(format!("orchard-secret-{}", uuid::Uuid::new_v4()));
        ensure_data_dir(&dir).unwrap();
        let a = load_or_create_jwt_secret(&dir).unwrap();
        let b = load_or_create_jwt_secret(&dir).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), SECRET_LEN);
        let mode = fs::metadata(dir.join(JWT_SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn an_open_data_dir_is_tightened_to_owner_only() {
        let dir = std::env::temp_dir().join(format!("orchard-datadir-{}", uuid::Uuid::new_v4()));
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_data_dir(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn passwords_are_random_and_long() {
        let a = random_password().unwrap();
        assert_eq!(a.len(), 24);
        assert_ne!(a, random_password().unwrap());
    }
}
