//! Diesel queries on the audit schema: entries appended to the chain, read
//! back a page at a time, and the whole chain verified.
//!
//! An append's transaction starts by moving the chain's head (a write, so
//! SQLite takes its write lock at once and PostgreSQL locks the head row):
//! appends are serialised, and each entry follows the one before it.

use std::collections::HashSet;

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::error::AuditError;
use super::keys::{AuditKey, EntryKey};
use super::model::{Checkpoint, Entry, Finding, Marker, NewEntry, Verifier};
use super::schema::{chain_head, checkpoints, entries, markers};
use crate::kernel::db::DbConnection;

/// Entries read at a time while verifying.
const VERIFY_PAGE: i64 = 1000;

/// An `entries` row.
#[derive(Queryable, Selectable)]
#[diesel(table_name = entries)]
struct Row {
    seq: i64,
    id: String,
    event_id: Option<String>,
    at: NaiveDateTime,
    actor: String,
    action: String,
    subject: String,
    outcome: String,
    client_ip: String,
    request_id: String,
    trace_id: String,
    details: String,
    prev_hash: String,
    hash: String,
    mac: String,
}

impl From<Row> for Entry {
    fn from(row: Row) -> Entry {
        Entry {
            seq: row.seq,
            // An id that does not read is an altered entry: its hash says so.
            id: Uuid::parse_str(&row.id).unwrap_or_default(),
            fields: NewEntry {
                event_id: row.event_id,
                at: row.at.and_utc(),
                actor: row.actor,
                action: row.action,
                subject: row.subject,
                outcome: row.outcome,
                client_ip: row.client_ip,
                request_id: row.request_id,
                trace_id: row.trace_id,
                details: row.details,
            },
            prev_hash: row.prev_hash,
            hash: row.hash,
            mac: row.mac,
        }
    }
}

/// The number and hash of the last entry appended.
pub fn head(conn: &mut DbConnection) -> QueryResult<(i64, String)> {
    chain_head::table
        .select((chain_head::seq, chain_head::hash))
        .filter(chain_head::id.eq(1))
        .first(conn)
}

/// Appends `new` to the chain in one transaction, each entry after the one
/// before; an entry of an event already recorded (or met earlier in `new`)
/// is passed over. Answers the entries appended. Rows go in a few
/// statements, however many there are: one look for the events recorded
/// already, one insert per [`INSERT_CHUNK`] entries.
pub fn append(
    conn: &mut DbConnection,
    new: &[NewEntry],
    key: &EntryKey,
) -> Result<Vec<Entry>, AuditError> {
    conn.transaction(|conn| {
        // The write that takes the lock; the head is read after it.
        diesel::update(chain_head::table.filter(chain_head::id.eq(1)))
            .set(chain_head::seq.eq(chain_head::seq))
            .execute(conn)?;
        let (mut seq, mut prev) = head(conn)?;
        let events: Vec<&str> = new.iter().filter_map(|e| e.event_id.as_deref()).collect();
        let mut recorded: HashSet<String> = HashSet::new();
        for chunk in events.chunks(INSERT_CHUNK) {
            recorded.extend(
                entries::table
                    .filter(entries::event_id.eq_any(chunk))
                    .select(entries::event_id)
                    .load::<Option<String>>(conn)?
                    .into_iter()
                    .flatten(),
            );
        }
        let mut appended = Vec::with_capacity(new.len());
        for fields in new {
            if let Some(event) = &fields.event_id
                && !recorded.insert(event.clone())
            {
                continue;
            }
            // Microseconds: what both databases keep, so the entry reads
            // back exactly as it was hashed.
            let fields = NewEntry {
                at: fields.at.trunc_subsecs(6),
                ..fields.clone()
            };
            seq += 1;
            let entry = Entry::chain(seq, Uuid::now_v7(), fields, &prev).sealed(key);
            prev.clone_from(&entry.hash);
            appended.push(entry);
        }
        for chunk in appended.chunks(INSERT_CHUNK) {
            let rows: Vec<NewRow<'_>> = chunk.iter().map(NewRow::from).collect();
            insert(conn, &rows)?;
        }
        diesel::update(chain_head::table.filter(chain_head::id.eq(1)))
            .set((chain_head::seq.eq(seq), chain_head::hash.eq(&prev)))
            .execute(conn)?;
        Ok(appended)
    })
}

/// Inserts `rows` in one statement. Each backend's own connection takes a
/// many-row insert, which the connection over both does not.
fn insert(conn: &mut DbConnection, rows: &[NewRow<'_>]) -> QueryResult<usize> {
    let statement = diesel::insert_into(entries::table).values(rows);
    match conn {
        #[cfg(feature = "postgres")]
        DbConnection::Pg(c) => statement.execute(c),
        #[cfg(feature = "sqlite")]
        DbConnection::Sqlite(c) => statement.execute(c),
    }
}

/// Entries one insert statement carries (15 values each).
const INSERT_CHUNK: usize = 200;

/// An `entries` row about to be inserted, exactly as `Entry` holds it.
#[derive(Insertable)]
#[diesel(table_name = entries)]
pub struct NewRow<'a> {
    seq: i64,
    id: String,
    event_id: Option<&'a str>,
    at: NaiveDateTime,
    actor: &'a str,
    action: &'a str,
    subject: &'a str,
    outcome: &'a str,
    client_ip: &'a str,
    request_id: &'a str,
    trace_id: &'a str,
    details: &'a str,
    prev_hash: &'a str,
    hash: &'a str,
    mac: &'a str,
}

impl<'a> From<&'a Entry> for NewRow<'a> {
    fn from(e: &'a Entry) -> Self {
        let f = &e.fields;
        NewRow {
            seq: e.seq,
            id: e.id.to_string(),
            event_id: f.event_id.as_deref(),
            at: f.at.naive_utc(),
            actor: &f.actor,
            action: &f.action,
            subject: &f.subject,
            outcome: &f.outcome,
            client_ip: &f.client_ip,
            request_id: &f.request_id,
            trace_id: &f.trace_id,
            details: &f.details,
            prev_hash: &e.prev_hash,
            hash: &e.hash,
            mac: &e.mac,
        }
    }
}

/// Signs the chain's head as it is now, unless it is empty or signed
/// already; the checkpoint written, if one was.
pub fn checkpoint(
    conn: &mut DbConnection,
    key: &AuditKey,
    at: DateTime<Utc>,
) -> Result<Option<Checkpoint>, AuditError> {
    conn.transaction(|conn| {
        // The head as of this write lock: no append slips in between.
        diesel::update(chain_head::table.filter(chain_head::id.eq(1)))
            .set(chain_head::seq.eq(chain_head::seq))
            .execute(conn)?;
        let (seq, hash) = head(conn)?;
        let signed: i64 = checkpoints::table
            .filter(checkpoints::seq.eq(seq))
            .count()
            .get_result(conn)?;
        if seq == 0 || signed > 0 {
            return Ok(None);
        }
        let checkpoint = Checkpoint::sign(seq, &hash, at.trunc_subsecs(6), key)?;
        diesel::insert_into(checkpoints::table)
            .values((
                checkpoints::seq.eq(checkpoint.seq),
                checkpoints::hash.eq(&checkpoint.hash),
                checkpoints::at.eq(checkpoint.at.naive_utc()),
                checkpoints::key_id.eq(&checkpoint.key_id),
                checkpoints::signature.eq(&checkpoint.signature),
            ))
            .execute(conn)?;
        Ok(Some(checkpoint))
    })
}

/// The number of the oldest entry kept.
fn oldest_kept(conn: &mut DbConnection) -> QueryResult<Option<i64>> {
    entries::table
        .select(diesel::dsl::min(entries::seq))
        .first::<Option<i64>>(conn)
}

/// Removes the entries made before `before`, up to the newest checkpoint
/// among them, which then anchors what is kept (with the checkpoints
/// after it); the number of entries removed.
pub fn retain(
    conn: &mut DbConnection,
    before: DateTime<Utc>,
    key: &AuditKey,
    at: DateTime<Utc>,
) -> Result<usize, AuditError> {
    conn.transaction(|conn| {
        diesel::update(chain_head::table.filter(chain_head::id.eq(1)))
            .set(chain_head::seq.eq(chain_head::seq))
            .execute(conn)?;
        let mut anchor = None;
        for checkpoint in checkpoints(conn)?.into_iter().rev() {
            let made: Option<NaiveDateTime> = entries::table
                .select(entries::at)
                .filter(entries::seq.eq(checkpoint.seq))
                .first(conn)
                .optional()?;
            if made.is_some_and(|at| at.and_utc() < before) {
                anchor = Some(checkpoint.seq);
                break;
            }
        }
        let Some(anchor) = anchor else { return Ok(0) };
        let hash: String = entries::table
            .select(entries::hash)
            .filter(entries::seq.eq(anchor))
            .first(conn)?;
        let removed =
            diesel::delete(entries::table.filter(entries::seq.le(anchor))).execute(conn)?;
        diesel::delete(checkpoints::table.filter(checkpoints::seq.lt(anchor))).execute(conn)?;
        // Signed, so that a prefix removed by anyone else is named.
        let marker = Marker::sign(Marker::RETAINED, anchor, &hash, at.trunc_subsecs(6), key)?;
        put_marker(conn, &marker)?;
        Ok(removed)
    })
}

/// The marker of `kind`, if audit wrote one.
pub fn marker(conn: &mut DbConnection, kind: &str) -> QueryResult<Option<Marker>> {
    Ok(markers::table
        .select((
            markers::kind,
            markers::seq,
            markers::hash,
            markers::at,
            markers::key_id,
            markers::signature,
        ))
        .filter(markers::kind.eq(kind))
        .first::<(String, i64, String, NaiveDateTime, String, String)>(conn)
        .optional()?
        .map(|(kind, seq, hash, at, key_id, signature)| Marker {
            kind,
            seq,
            hash,
            at: at.and_utc(),
            key_id,
            signature,
        }))
}

/// Writes `marker`, in place of the one of its kind.
fn put_marker(conn: &mut DbConnection, marker: &Marker) -> QueryResult<()> {
    diesel::delete(markers::table.filter(markers::kind.eq(&marker.kind))).execute(conn)?;
    diesel::insert_into(markers::table)
        .values((
            markers::kind.eq(&marker.kind),
            markers::seq.eq(marker.seq),
            markers::hash.eq(&marker.hash),
            markers::at.eq(marker.at.naive_utc()),
            markers::key_id.eq(&marker.key_id),
            markers::signature.eq(&marker.signature),
        ))
        .execute(conn)
        .map(|_| ())
}

/// Brings a log written by an older version under today's rules, once:
/// entries made before entries carried a MAC are marked as such (from the
/// head on, they carry one), and entries an older retention removed up to
/// a checkpoint get the signed marker today's retention writes. What the
/// log holds at this first start is taken on trust, as the checkpoints
/// and the witness vouch for it.
pub fn upgrade(
    conn: &mut DbConnection,
    key: &AuditKey,
    at: DateTime<Utc>,
) -> Result<(), AuditError> {
    conn.transaction(|conn| {
        diesel::update(chain_head::table.filter(chain_head::id.eq(1)))
            .set(chain_head::seq.eq(chain_head::seq))
            .execute(conn)?;
        let at = at.trunc_subsecs(6);
        let unsealed: i64 = entries::table
            .filter(entries::mac.eq(""))
            .count()
            .get_result(conn)?;
        if unsealed > 0 && marker(conn, Marker::MACS_FROM)?.is_none() {
            let (seq, hash) = head(conn)?;
            let marker = Marker::sign(Marker::MACS_FROM, seq + 1, &hash, at, key)?;
            put_marker(conn, &marker)?;
        }
        let oldest = oldest_kept(conn)?;
        if let Some(first) = oldest.filter(|first| *first > 1)
            && marker(conn, Marker::RETAINED)?.is_none()
            && let Some(anchor) = checkpoints(conn)?
                .into_iter()
                .find(|c| c.seq == first - 1 && c.signed_by(&key.public))
        {
            let marker = Marker::sign(Marker::RETAINED, anchor.seq, &anchor.hash, at, key)?;
            put_marker(conn, &marker)?;
        }
        Ok(())
    })
}

/// Every checkpoint, in order.
pub fn checkpoints(conn: &mut DbConnection) -> QueryResult<Vec<Checkpoint>> {
    Ok(checkpoints::table
        .select((
            checkpoints::seq,
            checkpoints::hash,
            checkpoints::at,
            checkpoints::key_id,
            checkpoints::signature,
        ))
        .order(checkpoints::seq)
        .load::<(i64, String, NaiveDateTime, String, String)>(conn)?
        .into_iter()
        .map(|(seq, hash, at, key_id, signature)| Checkpoint {
            seq,
            hash,
            at: at.and_utc(),
            key_id,
            signature,
        })
        .collect())
}

/// Which entries a listing shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub subject: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Up to `limit` entries that `filter` lets through, in order, after the
/// entry numbered `after`.
pub fn list(
    conn: &mut DbConnection,
    filter: &Filter,
    after: i64,
    limit: i64,
) -> QueryResult<Vec<Entry>> {
    let mut query = entries::table
        .select(Row::as_select())
        .filter(entries::seq.gt(after))
        .order(entries::seq)
        .limit(limit)
        .into_boxed();
    if let Some(actor) = &filter.actor {
        query = query.filter(entries::actor.eq(actor.clone()));
    }
    if let Some(action) = &filter.action {
        query = query.filter(entries::action.eq(action.clone()));
    }
    if let Some(subject) = &filter.subject {
        query = query.filter(entries::subject.eq(subject.clone()));
    }
    if let Some(from) = filter.from {
        query = query.filter(entries::at.ge(from.naive_utc()));
    }
    if let Some(until) = filter.until {
        query = query.filter(entries::at.lt(until.naive_utc()));
    }
    Ok(query
        .load::<Row>(conn)?
        .into_iter()
        .map(Entry::from)
        .collect())
}

/// Walks the whole chain from the first entry to the head, held to every
/// checkpoint and to the `witness` kept outside the database, all of which
/// `key` must have signed: how many entries hold, or the first finding.
pub fn verify(
    conn: &mut DbConnection,
    audit_key: &AuditKey,
    witness: Option<&Checkpoint>,
) -> Result<Result<u64, Finding>, AuditError> {
    let key = &audit_key.public;
    let entry_key = audit_key.entry_key();
    conn.transaction(|conn| {
        // The chain and its head as of one moment, whatever is appended
        // meanwhile (a SQLite read transaction is one snapshot already).
        #[cfg(feature = "postgres")]
        if let DbConnection::Pg(_) = conn {
            diesel::sql_query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(conn)?;
        }
        // The database's checkpoints, and the witness's beyond them: what
        // the database lost since the witness saw it is missing.
        let mut signed = checkpoints(conn)?;
        if let Some(witness) = witness
            && !signed.contains(witness)
        {
            signed.push(witness.clone());
            signed.sort_by_key(|c| c.seq);
        }
        let mut verifier = match Verifier::with_checkpoints(&signed, key) {
            Ok(verifier) => verifier,
            Err(finding) => return Ok(Err(finding)),
        };
        // Every entry carries a MAC, but those made before entries did,
        // which a signed marker names.
        let macs_from = match marker(conn, Marker::MACS_FROM)? {
            Some(m) if m.signed_by(key) => m.seq,
            Some(m) => return Ok(Err(Finding::ForgedCheckpoint(m.seq))),
            None => 1,
        };
        verifier.sealed_by(entry_key, macs_from);
        // Entries removed by retention end where its signed marker says;
        // without one, what is missing was deleted.
        let (oldest, head_seq) = (oldest_kept(conn)?, head(conn)?.0);
        let first = oldest.unwrap_or(head_seq + 1);
        if first > 1 {
            match marker(conn, Marker::RETAINED)? {
                Some(m) if !m.signed_by(key) => {
                    return Ok(Err(Finding::ForgedCheckpoint(m.seq)));
                }
                Some(m) if m.seq == first - 1 => verifier.start_after(m.seq, &m.hash),
                Some(m) if m.seq < first - 1 => return Ok(Err(Finding::Deleted(m.seq + 1))),
                // Retention marked less than is missing: the rest was deleted.
                _ => return Ok(Err(Finding::Deleted(1))),
            }
        }
        let mut after = 0;
        loop {
            let page = list(conn, &Filter::default(), after, VERIFY_PAGE)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for entry in &page {
                if let Err(finding) = verifier.feed(entry) {
                    return Ok(Err(finding));
                }
            }
        }
        let (seq, hash) = head(conn)?;
        Ok(verifier.finish(seq, &hash))
    })
}
