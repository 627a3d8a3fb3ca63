//! The witness: the newest signed checkpoint, kept outside the audit
//! database, in a file of its own (`audit.witness_path`). Whoever can write
//! the database can cut its tail, delete its checkpoints and set its head
//! back, or put an older copy of it in place; none of that reaches the
//! witness, so verification, which holds the log to the witness too, names
//! the entries gone. The file holds one checkpoint, replaced whole (written
//! beside it, then renamed over it) each time one is signed, and readable
//! by its owner only.
//!
//! Form: one line, `v1 <seq> <hash> <at, RFC 3339> <key id> <signature>`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};

use super::model::Checkpoint;

/// The file's name under the data directory, when no path is configured.
pub const WITNESS_FILE: &str = "audit.witness";

/// Where the witness is: `configured`, or the data directory's file.
pub fn path(configured: &str, data_dir: &Path) -> PathBuf {
    if configured.is_empty() {
        data_dir.join(WITNESS_FILE)
    } else {
        PathBuf::from(configured)
    }
}

/// The witness file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a witness (`v1 <seq> <hash> <at> <key id> <signature>`)", .0.display())]
    NotAWitness(PathBuf),
    #[error(transparent)]
    File(#[from] crate::kernel::keyfile::KeyFileError),
}

/// The checkpoint the witness holds; `None` when there is no witness yet.
pub fn read(path: &Path) -> Result<Option<Checkpoint>, WitnessError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(WitnessError::Io {
                path: path.to_owned(),
                source: e,
            });
        }
    };
    parse(text.trim())
        .map(Some)
        .ok_or_else(|| WitnessError::NotAWitness(path.to_owned()))
}

fn parse(line: &str) -> Option<Checkpoint> {
    let mut fields = line.split(' ');
    if fields.next()? != "v1" {
        return None;
    }
    let seq = fields.next()?.parse().ok()?;
    let hash = fields.next()?.to_owned();
    let at = DateTime::parse_from_rfc3339(fields.next()?)
        .ok()?
        .with_timezone(&Utc);
    let key_id = fields.next()?.to_owned();
    let signature = fields.next()?.to_owned();
    fields.next().is_none().then_some(Checkpoint {
        seq,
        hash,
        at,
        key_id,
        signature,
    })
}

/// Puts `checkpoint` in the witness, in place of the one there.
pub fn write(path: &Path, checkpoint: &Checkpoint) -> Result<(), WitnessError> {
    let line = format!(
        "v1 {} {} {} {} {}\n",
        checkpoint.seq,
        checkpoint.hash,
        checkpoint.at.to_rfc3339_opts(SecondsFormat::Micros, true),
        checkpoint.key_id,
        checkpoint.signature
    );
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::kernel::keyfile::private_dir(dir)?;
    let beside = path.with_extension("witness.new");
    let _ = std::fs::remove_file(&beside);
    crate::kernel::keyfile::write_new(&beside, line.as_bytes(), 0o600)?;
    std::fs::rename(&beside, path).map_err(|source| WitnessError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_witness_reads_back_what_was_written_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let file = path("", dir.path());
        assert!(matches!(read(&file), Ok(None)));
        let checkpoint = Checkpoint {
            seq: 7,
            hash: "ab".repeat(32),
            at: DateTime::from_timestamp(1_800_000_000, 123_456_000).unwrap(),
            key_id: "k4.pid.x".into(),
            signature: "v4.public.y".into(),
        };
        write(&file, &checkpoint).unwrap();
        assert_eq!(read(&file).unwrap(), Some(checkpoint.clone()));
        let newer = Checkpoint {
            seq: 8,
            ..checkpoint
        };
        write(&file, &newer).unwrap();
        assert_eq!(read(&file).unwrap(), Some(newer));
        std::fs::write(&file, "v1 8 x").unwrap();
        assert!(read(&file).is_err());
    }
}
