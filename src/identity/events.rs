//! Identity's events: the outbox rows of the changes it makes, each an
//! event of the catalogue ([`crate::events::identity`]) with a
//! [`UserEvent`] payload.

use super::store::UserRow;
use crate::events::Event;
pub(super) use crate::events::identity::*;
use crate::kernel::outbox::NewEvent;
use crate::proto::events::v1::UserEvent;

/// `event` about the account `row`.
pub(super) fn user_event(event: &Event<UserEvent>, row: &UserRow) -> NewEvent {
    user_event_by(event, row, String::new())
}

/// `event` about the account `row`, caused by the signed-in session
/// `session_id`.
pub(super) fn user_event_by(
    event: &Event<UserEvent>,
    row: &UserRow,
    session_id: String,
) -> NewEvent {
    let payload = UserEvent {
        user_id: row.id.clone(),
        email: row.email.clone(),
        display_name: row.display_name.clone(),
        status: row.status.clone(),
        locked_until_unix_ms: 0,
        session_id,
    };
    event.row(row.id.clone(), &payload)
}
