//! How far a consumer has read each source's stream, kept in the
//! consumer's own database and moved in the same transaction as the effects
//! of the events it read: after a restart it resumes right after the last
//! event whose effects were kept, so none is lost and none applied twice.
//!
//! Every consuming service's schema has a `consumed` table of this shape.

use std::collections::BTreeMap;

use diesel::prelude::*;

use super::bus::{Delivery, Position};
use super::db::DbConnection;

diesel::table! {
    consumed (consumer, source, partition) {
        consumer -> Text,
        source -> Text,
        partition -> Integer,
        position -> BigInt,
    }
}

/// The positions `consumer` stored, one per source and partition.
fn load(conn: &mut DbConnection, consumer: &str) -> QueryResult<Vec<Position>> {
    Ok(consumed::table
        .filter(consumed::consumer.eq(consumer))
        .select((consumed::source, consumed::partition, consumed::position))
        .load::<(String, i32, i64)>(conn)?
        .into_iter()
        .map(|(source, partition, offset)| Position {
            source,
            partition,
            offset,
        })
        .collect())
}

/// Moves `consumer` past `deliveries`; call inside the transaction that
/// keeps their effects. Deliveries without a position (the in-process
/// bus) move nothing, and no position moves back.
fn advance(conn: &mut DbConnection, consumer: &str, deliveries: &[Delivery]) -> QueryResult<()> {
    let mut furthest: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for p in deliveries.iter().filter_map(|d| d.position.as_ref()) {
        let at = furthest.entry((&p.source, p.partition)).or_insert(p.offset);
        *at = (*at).max(p.offset);
    }
    for ((source, partition), offset) in furthest {
        let key = consumed::consumer
            .eq(consumer)
            .and(consumed::source.eq(source))
            .and(consumed::partition.eq(partition));
        let moved = diesel::update(consumed::table.filter(key))
            .filter(consumed::position.lt(offset))
            .set(consumed::position.eq(offset))
            .execute(conn)?;
        if moved == 0 {
            let known: i64 = consumed::table.filter(key).count().get_result(conn)?;
            if known == 0 {
                diesel::insert_into(consumed::table)
                    .values((
                        consumed::consumer.eq(consumer),
                        consumed::source.eq(source),
                        consumed::partition.eq(partition),
                        consumed::position.eq(offset),
                    ))
                    .execute(conn)?;
            }
        }
    }
    Ok(())
}

/// Where `consumer` starts reading: right after what it stored.
async fn start(
    db: &super::db::Db,
    consumer: &str,
) -> Result<super::bus::Start, super::db::DbError> {
    let consumer = consumer.to_owned();
    let stored = db
        .run(move |conn| load(conn, &consumer).map_err(super::db::DbError::from))
        .await?;
    Ok(super::bus::Start::After(stored))
}

/// Runs `effect` and moves `consumer` past `deliveries` in one transaction,
/// the move first (a write, so SQLite takes its write lock at once). Without
/// positions (the in-process bus) there is nothing to move, and `effect`
/// runs as it would alone.
pub fn with_effect<T, E>(
    conn: &mut DbConnection,
    consumer: &str,
    deliveries: &[Delivery],
    effect: impl FnOnce(&mut DbConnection) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<diesel::result::Error>,
{
    use diesel::Connection as _;
    if deliveries.iter().all(|d| d.position.is_none()) {
        return effect(conn);
    }
    conn.transaction(|c| {
        advance(c, consumer, deliveries)?;
        effect(c)
    })
}

/// Follows `sources` as `consumer` from where it got to before, `most`
/// events at a time (see [`super::bus::follow_batches`]), until the
/// context's shutdown. `handle` keeps the positions of what it takes with
/// its effects (see [`with_effect`]).
pub async fn follow_stored<H, F>(
    ctx: &super::ServiceContext,
    db: &super::db::Db,
    consumer: &str,
    sources: &[&str],
    most: usize,
    handle: H,
) -> anyhow::Result<tokio::task::JoinHandle<()>>
where
    H: Fn(Vec<Delivery>) -> F + Send + 'static,
    F: std::future::Future<Output = Result<(), super::bus::Unhandled>> + Send,
{
    let batches = super::bus::Batches {
        start: start(db, consumer).await?,
        most,
    };
    super::bus::follow_batches(
        &ctx.bus,
        consumer,
        sources,
        batches,
        ctx.shutdown.clone(),
        handle,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
}
