//! Secret keys kept in files of their own under the data directory: hex,
//! readable by the owner only, made on first use. For keys that must not
//! live in the database whose contents they protect. Also the data
//! directory itself and the database files in it, which hold password
//! hashes and sealed keys: the directory is its owner's alone (0700) and
//! each database file too (0600), whatever the process's umask.

use std::path::Path;

/// Makes `dir` (and its parents) when missing, and leaves it readable by
/// its owner only. A directory the process cannot change (another user's)
/// is used as it is, with a warning.
pub fn private_dir(dir: &Path) -> Result<(), String> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    owner_only(dir, 0o700);
    Ok(())
}

/// Makes the file at `path` when missing, empty, and leaves it readable
/// and writable by its owner only: for a database file before SQLite opens
/// it (its journal files then take the same mode).
pub fn private_file(path: &Path) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
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
pub fn read_or_create(path: &Path, make: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, String> {
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        return hex::decode(text.trim()).map_err(|_| format!("{}: not hex", path.display()));
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
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!("{} exists already", path.display())
        } else {
            format!("{}: {e}", path.display())
        }
    })?;
    std::io::Write::write_all(&mut file, bytes).map_err(|e| format!("{}: {e}", path.display()))
}
