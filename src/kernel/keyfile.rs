//! Secret keys kept in files of their own under the data directory: hex,
//! readable by the owner only, made on first use. For keys that must not
//! live in the database whose contents they protect.

use std::path::Path;

/// The bytes in the key file at `path`; when there is none, `make` makes
/// them and they are written there first (owner-only on Unix).
pub fn read_or_create(path: &Path, make: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, String> {
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        return hex::decode(text.trim()).map_err(|_| format!("{}: not hex", path.display()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
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
