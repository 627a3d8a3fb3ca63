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
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, hex::encode(&key).as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "created a key file");
    Ok(key)
}
