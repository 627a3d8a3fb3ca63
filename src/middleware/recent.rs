//! Tokens that verified lately, remembered by the thread that served them.
//!
//! Sits in front of the shared verified-token cache in [`super::bearer`]: a
//! hit is one hash and one compare on the serving thread, reading nothing
//! another thread writes but one counter that changes only when a session
//! is revoked. The table is direct-mapped, so it never holds more than
//! [`SLOTS`] tokens per thread and a newcomer simply takes its slot's place.
//!
//! Only tokens that passed full verification are put in, so the table gives
//! no one a way to place entries of their choosing. Every entry names the
//! check that verified it and the revocation generation of that check at
//! the time: a revocation anywhere empties every thread's table of that
//! check's tokens at their next use. Expiry is still checked on each hit.

use std::cell::RefCell;
use std::hash::BuildHasher;

use super::token::Holder;

/// Entries per thread.
pub const SLOTS: usize = 256;

/// Bytes of the token's end that pick its slot. A v4.public token ends with
/// its signature and the footer naming the key; the last 128 bytes always
/// reach well into the signature, which differs for every token, and
/// hashing them costs a quarter of hashing the whole token.
const HASHED_TAIL: usize = 128;

struct Slot {
    check: u64,
    generation: u64,
    token: Box<[u8]>,
    principal: Holder,
}

thread_local! {
    static TABLE: RefCell<Vec<Option<Slot>>> = const { RefCell::new(Vec::new()) };
}

fn slot_of(token: &[u8]) -> usize {
    let tail = token
        .get(token.len().saturating_sub(HASHED_TAIL)..)
        .unwrap_or(token);
    let hash = foldhash::fast::FixedState::with_seed(0x6761_7465_686f_7573).hash_one(tail);
    // The modulo keeps the index in range whatever SLOTS is.
    (hash as usize) % SLOTS
}

/// The principal of `token`, if this thread remembers it as verified by
/// `check` at `generation`.
pub fn get(check: u64, generation: u64, token: &[u8]) -> Option<Holder> {
    TABLE
        .try_with(|table| {
            let table = table.try_borrow().ok()?;
            let slot = table.get(slot_of(token))?.as_ref()?;
            (slot.check == check && slot.generation == generation && *slot.token == *token)
                .then(|| slot.principal.clone())
        })
        .ok()
        .flatten()
}

/// Remembers that `token` verified as `principal` by `check` at `generation`.
pub fn put(check: u64, generation: u64, token: &[u8], principal: &Holder) {
    // Gone only while the thread is ending; nothing to remember then.
    let _ = TABLE.try_with(|table| {
        let Ok(mut table) = table.try_borrow_mut() else {
            return;
        };
        if table.is_empty() {
            table.resize_with(SLOTS, || None);
        }
        if let Some(place) = table.get_mut(slot_of(token)) {
            *place = Some(Slot {
                check,
                generation,
                token: token.into(),
                principal: principal.clone(),
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::token::{Principal, SessionId, UserId};

    fn principal() -> Holder {
        Holder::User(Principal {
            user_id: UserId::now_v7(),
            session_id: SessionId::now_v7(),
            expires_at: chrono::Utc::now(),
        })
    }

    #[test]
    fn a_token_is_found_only_for_its_check_and_generation_and_in_full() {
        let token = [b"v4.public.".as_slice(), &[b'a'; 300]].concat();
        let p = principal();
        put(7, 3, &token, &p);
        assert_eq!(get(7, 3, &token), Some(p));
        assert_eq!(get(8, 3, &token), None, "another check");
        assert_eq!(get(7, 4, &token), None, "a revocation since");
        // A token with the same tail lands in the same slot, and is not taken
        // for the one there.
        let mut twin = token.clone();
        twin[12] = b'b';
        assert_eq!(slot_of(&twin), slot_of(&token));
        assert_eq!(get(7, 3, &twin), None);
        assert_eq!(get(7, 3, &token[..token.len() - 1]), None);
    }

    #[test]
    fn the_table_stays_bounded_and_newcomers_take_the_place() {
        let tokens: Vec<Vec<u8>> = (0..SLOTS * 4)
            .map(|i| format!("v4.public.token-{i}").into_bytes())
            .collect();
        for t in &tokens {
            put(1, 0, t, &principal());
        }
        let held = TABLE.with_borrow(|table| table.iter().flatten().count());
        assert!(held <= SLOTS, "{held}");
        // The last one in is always found: it took its slot.
        assert!(get(1, 0, tokens.last().unwrap()).is_some());
        let found = tokens.iter().filter(|t| get(1, 0, t).is_some()).count();
        assert_eq!(found, held);
    }
}
