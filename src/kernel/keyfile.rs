//! Secret keys kept in files of their own under the data directory: hex,
//! readable by the owner only, made on first use. For keys that must not
//! live in the database whose contents they protect. Also the data
//! directory itself and the database files in it, which hold password
//! hashes and sealed keys: the directory is its owner's alone (0700) and
//! each database file too (0600), whatever the process's umask.

use std::path::{Path, PathBuf};

/// A key file or private directory that cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} exists already", .0.display())]
    Exists(PathBuf),
    #[error("{}: not hex", .0.display())]
    NotHex(PathBuf),
    #[error("{}: a key must be {expected} bytes", path.display())]
    Length { path: PathBuf, expected: usize },
    /// A key given in the configuration rather than in a file.
    #[error("{key} must be {expected} bytes ({} hex characters)", expected * 2)]
    Configured { key: &'static str, expected: usize },
}

impl KeyFileError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        move |source| KeyFileError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// Makes `dir` (and its parents) when missing, and leaves it readable by
/// its owner only. A directory the process cannot change (another user's)
/// is used as it is, with a warning.
pub fn private_dir(dir: &Path) -> Result<(), KeyFileError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(KeyFileError::io("create", dir))?;
    owner_only(dir, 0o700);
    Ok(())
}

/// Makes the file at `path` when missing, empty, and leaves it readable
/// and writable by its owner only: for a database file before SQLite opens
/// it (its journal files then take the same mode).
pub fn private_file(path: &Path) -> Result<(), KeyFileError> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(KeyFileError::io("open", path))?;
    owner_only(path, 0o600);
    Ok(())
}

/// Sets `mode` on `path` when it has another (made under an older umask,
/// say); a warning when that is not allowed.
fn owner_only(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if meta.permissions().mode() & 0o777 == mode {
            return;
        }
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            tracing::warn!(path = %path.display(), error = %e,
                "cannot make this readable by its owner only");
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

/// The bytes in the key file at `path`; when there is none, `make` makes
/// them and they are written there first (owner-only on Unix).
pub fn read_or_create(
    path: &Path,
    make: impl FnOnce() -> Vec<u8>,
) -> Result<Vec<u8>, KeyFileError> {
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(KeyFileError::io("read", path))?;
        return hex::decode(text.trim()).map_err(|_| KeyFileError::NotHex(path.to_owned()));
    }
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    let key = make();
    write_new(path, hex::encode(&key).as_bytes(), 0o600)?;
    tracing::info!(path = %path.display(), "created a key file");
    Ok(key)
}

/// Writes `bytes` to a file made now at `path`, with `mode` on Unix
/// (0o600: its owner's alone); a file already there is an error, never
/// overwritten.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyFileError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists(path.to_owned())
        } else {
            KeyFileError::io("create", path)(e)
        }
    })?;
    std::io::Write::write_all(&mut file, bytes).map_err(KeyFileError::io("write", path))
}
