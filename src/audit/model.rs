//! What the audit log is made of, and how it proves itself: each entry's
//! hash is SHA-256 over the previous entry's hash and the entry's own
//! canonical form, so changing, removing or adding an entry anywhere breaks
//! the chain from there on; [`Verifier`] walks the chain and names the
//! first entry that does not hold.
//!
//! The canonical form is every field, in a fixed order, each as its length
//! (8 bytes, big-endian) and its bytes: no two different entries share one,
//! whatever their fields hold.

use chrono::{DateTime, SecondsFormat, Utc};
use pasetors::keys::AsymmetricPublicKey;
use pasetors::version4::V4;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use super::signed::{Checkpoint, Marker};

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An entry about to be appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// The bus event it is made from; an event is recorded once.
    pub event_id: Option<String>,
    pub at: DateTime<Utc>,
    /// `user:<id>`, `service:<name>`, or empty when nobody is known.
    pub actor: String,
    /// What happened, e.g. `identity.user.registered`.
    pub action: String,
    /// What it happened to, e.g. `user:<id>`.
    pub subject: String,
    /// `success` or `failure`.
    pub outcome: String,
    pub client_ip: String,
    pub request_id: String,
    pub trace_id: String,
    /// A JSON object; never secrets.
    pub details: String,
}

/// An entry of the log, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its number: 1 for the first entry, one more for each after it.
    pub seq: i64,
    pub id: Uuid,
    pub fields: NewEntry,
    pub prev_hash: String,
    pub hash: String,
    /// The MAC of `hash` under a key derived from audit's key (see
    /// [`super::keys::EntryKey`]); empty on an entry made before entries
    /// carried one.
    pub mac: String,
}

impl Entry {
    /// The entry numbered `seq`, after the entry whose hash is `prev_hash`,
    /// without its MAC (see [`Entry::sealed`]).
    pub fn chain(seq: i64, id: Uuid, fields: NewEntry, prev_hash: &str) -> Entry {
        let hash = chain_hash(prev_hash, &canonical(seq, id, &fields));
        Entry {
            seq,
            id,
            fields,
            prev_hash: prev_hash.to_owned(),
            hash,
            mac: String::new(),
        }
    }

    /// The entry with its MAC under `key`.
    pub fn sealed(self, key: &super::keys::EntryKey) -> Entry {
        let mac = key.mac(&self.hash);
        Entry { mac, ..self }
    }

    /// The hash the entry's fields and its `prev_hash` make, whatever is
    /// stored beside them.
    pub fn computed_hash(&self) -> String {
        chain_hash(&self.prev_hash, &canonical(self.seq, self.id, &self.fields))
    }
}

/// Timestamps in the canonical form: UTC, microseconds, which both
/// databases keep.
pub fn canonical_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn canonical(seq: i64, id: Uuid, f: &NewEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let seq = seq.to_string();
    let id = id.to_string();
    let at = canonical_time(f.at);
    let event = f.event_id.as_deref().unwrap_or_default();
    for field in [
        seq.as_str(),
        id.as_str(),
        event,
        at.as_str(),
        f.actor.as_str(),
        f.action.as_str(),
        f.subject.as_str(),
        f.outcome.as_str(),
        f.client_ip.as_str(),
        f.request_id.as_str(),
        f.trace_id.as_str(),
        f.details.as_str(),
    ] {
        out.extend_from_slice(&(field.len() as u64).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

fn chain_hash(prev_hash: &str, canonical: &[u8]) -> String {
    let mut digest = Sha256::new();
    digest.update(prev_hash.as_bytes());
    digest.update(canonical);
    hex::encode(digest.finalize())
}

/// The first entry that does not hold, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Its fields, or its hash, were changed.
    Altered(i64),
    /// It is missing: the entries before and after it are there, or a
    /// signed checkpoint names it.
    Deleted(i64),
    /// It was not made by the chain: it does not follow the entry before.
    Inserted(i64),
    /// The checkpoint at this entry is not signed by audit's key.
    ForgedCheckpoint(i64),
    /// Its MAC does not hold: it was changed and hashed again, or made by
    /// someone without audit's key.
    Forged(i64),
}

impl Finding {
    /// The entry it names.
    pub fn seq(&self) -> i64 {
        match self {
            Finding::Altered(seq)
            | Finding::Deleted(seq)
            | Finding::Inserted(seq)
            | Finding::ForgedCheckpoint(seq)
            | Finding::Forged(seq) => *seq,
        }
    }

    /// What was found, as the API and the command line say it.
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::Altered(_) => "altered",
            Finding::Deleted(_) => "deleted",
            Finding::Inserted(_) => "inserted",
            Finding::ForgedCheckpoint(_) => "forged_checkpoint",
            Finding::Forged(_) => "forged",
        }
    }
}

/// Walks the chain in order, one entry at a time, and stops at the first
/// finding.
///
/// An entry that holds in itself but does not follow the one before is
/// either foreign (put there) or the sign that the one before was changed
/// and hashed again; the entry after it tells which: if that one follows
/// it, it is the chain's own and its predecessor was altered.
#[derive(Debug, Clone)]
pub struct Verifier {
    next_seq: i64,
    prev_hash: String,
    checked: u64,
    /// An entry that does not follow the one before, until the next shows
    /// which of the two is at fault.
    suspect: Option<(i64, String)>,
    /// The hashes signed checkpoints vouch for, by entry.
    vouched: std::collections::BTreeMap<i64, String>,
    /// The key entries' MACs are checked with, and the first entry that
    /// carries one; `None` checks none.
    sealed: Option<(super::keys::EntryKey, i64)>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            next_seq: 1,
            prev_hash: GENESIS.to_owned(),
            checked: 0,
            suspect: None,
            vouched: Default::default(),
            sealed: None,
        }
    }
}

impl Verifier {
    /// A verifier that holds the chain to `checkpoints` as well; one that
    /// `key` did not sign is a finding.
    pub fn with_checkpoints(
        checkpoints: &[Checkpoint],
        key: &AsymmetricPublicKey<V4>,
    ) -> Result<Verifier, Finding> {
        let mut verifier = Verifier::default();
        for checkpoint in checkpoints {
            if !checkpoint.signed_by(key) {
                return Err(Finding::ForgedCheckpoint(checkpoint.seq));
            }
            verifier
                .vouched
                .insert(checkpoint.seq, checkpoint.hash.clone());
        }
        Ok(verifier)
    }

    /// Holds every entry from `from` on to its MAC under `key`.
    pub fn sealed_by(&mut self, key: super::keys::EntryKey, from: i64) {
        self.sealed = Some((key, from));
    }

    /// Starts the walk after entry `seq`, whose hash was `hash`: where the
    /// kept chain begins once older entries were removed.
    pub fn start_after(&mut self, seq: i64, hash: &str) {
        self.next_seq = seq + 1;
        self.prev_hash = hash.to_owned();
    }

    /// Takes the next entry (in `seq` order); a finding when it, or the one
    /// before, does not hold.
    pub fn feed(&mut self, entry: &Entry) -> Result<(), Finding> {
        if let Some((seq, hash)) = self.suspect.take() {
            return Err(if entry.prev_hash == hash {
                Finding::Altered(seq - 1)
            } else {
                Finding::Inserted(seq)
            });
        }
        if entry.seq > self.next_seq {
            return Err(Finding::Deleted(self.next_seq));
        }
        if entry.computed_hash() != entry.hash
            || self
                .vouched
                .get(&entry.seq)
                .is_some_and(|hash| *hash != entry.hash)
        {
            return Err(Finding::Altered(entry.seq));
        }
        if let Some((key, from)) = &self.sealed
            && entry.seq >= *from
            && !key.holds(entry)
        {
            return Err(Finding::Forged(entry.seq));
        }
        if entry.seq < self.next_seq {
            return Err(Finding::Inserted(entry.seq));
        }
        if entry.prev_hash != self.prev_hash {
            self.suspect = Some((entry.seq, entry.hash.clone()));
        }
        self.next_seq = entry.seq + 1;
        self.prev_hash.clone_from(&entry.hash);
        self.checked += 1;
        Ok(())
    }

    /// After the last entry: the chain's head, as the log records it, must
    /// be where the walk ended.
    pub fn finish(&self, head_seq: i64, head_hash: &str) -> Result<u64, Finding> {
        if let Some((seq, _)) = &self.suspect {
            return Err(Finding::Inserted(*seq));
        }
        let last = self.next_seq - 1;
        // A checkpoint beyond the last entry: a tail was cut off, however
        // the head was made to agree.
        if let Some((vouched, _)) = self.vouched.last_key_value()
            && *vouched > last
        {
            return Err(Finding::Deleted(self.next_seq));
        }
        if head_seq > last {
            return Err(Finding::Deleted(self.next_seq));
        }
        if head_seq < last {
            return Err(Finding::Inserted(head_seq + 1));
        }
        if head_hash != self.prev_hash {
            return Err(Finding::Altered(last));
        }
        Ok(self.checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(n: usize) -> NewEntry {
        NewEntry {
            event_id: Some(format!("event-{n}")),
            at: DateTime::from_timestamp(1_800_000_000 + n as i64, 123_456_000).unwrap(),
            actor: format!("user:{n}"),
            action: crate::events::identity::USER_REGISTERED.name.into(),
            subject: format!("user:{n}"),
            outcome: "success".into(),
            client_ip: "192.0.2.1".into(),
            request_id: format!("req-{n}"),
            trace_id: String::new(),
            details: "{}".into(),
        }
    }

    fn log(count: usize) -> Vec<Entry> {
        let mut entries: Vec<Entry> = Vec::new();
        for n in 0..count {
            let prev = entries
                .last()
                .map_or(GENESIS, |e| e.hash.as_str())
                .to_owned();
            entries.push(Entry::chain(n as i64 + 1, Uuid::now_v7(), fields(n), &prev));
        }
        entries
    }

    fn verify(entries: &[Entry], head: (i64, &str)) -> Result<u64, Finding> {
        let mut verifier = Verifier::default();
        for entry in entries {
            verifier.feed(entry)?;
        }
        verifier.finish(head.0, head.1)
    }

    #[test]
    fn a_whole_chain_verifies_and_each_kind_of_tampering_is_named() {
        let entries = log(6);
        let head = (6, entries[5].hash.as_str());
        assert_eq!(verify(&entries, head), Ok(6));
        assert_eq!(verify(&[], (0, GENESIS)), Ok(0));

        // A field changed, its hash left as it was: altered.
        let mut edited = entries.clone();
        edited[2].fields.details = r#"{"role":"admin"}"#.into();
        assert_eq!(verify(&edited, head), Err(Finding::Altered(3)));
        // Changed with its hash made again: the next entry no longer
        // follows it, though that one is the chain's own.
        edited[2].hash = edited[2].computed_hash();
        assert_eq!(verify(&edited, head), Err(Finding::Altered(3)));

        // The last one changed and hashed again: the head knows its hash.
        let mut last = entries.clone();
        last[5].fields.outcome = "failure".into();
        last[5].hash = last[5].computed_hash();
        assert_eq!(verify(&last, head), Err(Finding::Altered(6)));

        // One taken out of the middle: deleted.
        let mut removed = entries.clone();
        removed.remove(3);
        assert_eq!(verify(&removed, head), Err(Finding::Deleted(4)));
        // The last one taken out: the head says it was there.
        assert_eq!(verify(&entries[..5], head), Err(Finding::Deleted(6)));

        // One added at the end, however well it is made: the head does not
        // know it.
        let mut added = entries.clone();
        added.push(Entry::chain(7, Uuid::now_v7(), fields(7), &entries[5].hash));
        assert_eq!(verify(&added, head), Err(Finding::Inserted(7)));
        // One put in place of another, with its own fields and hash: it does
        // not follow the entry before.
        let mut swapped = entries.clone();
        swapped[4] = Entry::chain(5, Uuid::now_v7(), fields(40), GENESIS);
        assert_eq!(verify(&swapped, head), Err(Finding::Inserted(5)));
    }

    #[test]
    fn signed_checkpoints_catch_a_cut_tail_and_a_chain_made_again() {
        let dir = std::env::temp_dir().join(format!("audit-key-{}", Uuid::now_v7()));
        let key = crate::audit::keys::AuditKey::load(&dir).unwrap();
        let entries = log(6);
        let at = DateTime::from_timestamp(1_800_000_100, 0).unwrap();
        let checkpoint = Checkpoint::sign(5, &entries[4].hash, at, &key).unwrap();
        assert!(checkpoint.signed_by(&key.public));
        let with = |checkpoints: &[Checkpoint], kept: &[Entry], head: (i64, &str)| {
            let mut verifier = Verifier::with_checkpoints(checkpoints, &key.public)?;
            for entry in kept {
                verifier.feed(entry)?;
            }
            verifier.finish(head.0, head.1)
        };
        let cp = std::slice::from_ref(&checkpoint);
        assert_eq!(with(cp, &entries, (6, &entries[5].hash)), Ok(6));
        // The last two cut off and the head set back to match: the
        // checkpoint still names entry 5.
        assert_eq!(
            with(cp, &entries[..4], (4, &entries[3].hash)),
            Err(Finding::Deleted(5))
        );
        // The chain made again from entry 3 on, every hash consistent: the
        // checkpoint's hash is not entry 5's any more.
        let mut remade = entries[..2].to_vec();
        for n in 2..6 {
            let prev = remade[n - 1].hash.clone();
            remade.push(Entry::chain(
                n as i64 + 1,
                Uuid::now_v7(),
                fields(n + 10),
                &prev,
            ));
        }
        let head = remade[5].hash.clone();
        assert_eq!(with(&[], &remade, (6, &head)), Ok(6), "unseen without one");
        assert_eq!(with(cp, &remade, (6, &head)), Err(Finding::Altered(5)));
        // A checkpoint changed, or signed by another key: forged.
        let mut moved = checkpoint.clone();
        moved.hash.clone_from(&remade[4].hash);
        assert_eq!(
            with(&[moved], &remade, (6, &head)),
            Err(Finding::ForgedCheckpoint(5))
        );
        let other = crate::audit::keys::AuditKey::load(&dir.join("other")).unwrap();
        let foreign = Checkpoint::sign(5, &remade[4].hash, at, &other).unwrap();
        assert_eq!(
            with(&[foreign], &remade, (6, &head)),
            Err(Finding::ForgedCheckpoint(5))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_canonical_form_tells_apart_fields_that_concatenate_alike() {
        let mut a = fields(1);
        let mut b = fields(1);
        a.actor = "user:1".into();
        a.action = "x".into();
        b.actor = "user:1x".into();
        b.action = String::new();
        let id = Uuid::now_v7();
        assert_ne!(
            Entry::chain(1, id, a, GENESIS).hash,
            Entry::chain(1, id, b, GENESIS).hash
        );
    }
}
