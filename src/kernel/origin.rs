//! Where a request came from and who made it, for the events it causes:
//! the client's address (the socket peer's, or the `Forwarded: for=` of a
//! request vouched for: one carrying a service's credential, as the
//! gateway's forwards and every service call do, or from a configured
//! proxy), the signed-in user, the
//! request id and the trace.
//!
//! A server reads them into the request's scope (see
//! [`super::observe`] and [`super::telemetry`], which answers a task's or a
//! thread's origin); [`super::db::Db::run`] carries them to the thread its
//! database work runs on, where [`super::outbox::enqueue`] writes them
//! beside each event.

use std::cell::RefCell;
use std::net::IpAddr;

use http::HeaderMap;

use super::config::ConfigError;

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (net, bits) = match text.split_once('/') {
            Some((a, b)) => (a.parse::<IpAddr>().ok()?, b.parse::<u8>().ok()?),
            None => {
                let a = text.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if net.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (ip, self.net) {
            (IpAddr::V4(a), IpAddr::V4(n)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(a) & mask == u32::from(n) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(n)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(n) & mask
            }
            _ => false,
        }
    }

    /// Every entry of `list` (the config key `key`), or the first bad one.
    pub fn parse_all(list: &[String], key: &str) -> Result<Vec<Cidr>, ConfigError> {
        list.iter()
            .map(|t| Cidr::parse(t).ok_or_else(|| ConfigError(format!("{key}: bad entry {t:?}"))))
            .collect()
    }
}

/// The client a request is from: the `for=` of its `Forwarded` field when
/// the request is `vouched` for (it comes from a peer trusted to say so),
/// else `peer` itself.
pub fn client(peer: IpAddr, headers: &HeaderMap, vouched: bool) -> IpAddr {
    if !vouched {
        return peer;
    }
    headers
        .get(http::header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(forwarded_for)
        .unwrap_or(peer)
}

/// The `for=` address of the first element of a `Forwarded` value (RFC
/// 7239): `for=192.0.2.1` or `for="[2001:db8::1]"`, a port allowed.
fn forwarded_for(value: &str) -> Option<IpAddr> {
    let element = value.split(',').next()?;
    let node = element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.eq_ignore_ascii_case("for").then_some(value)
    })?;
    let node = node.trim_matches('"');
    if let Some(v6) = node.strip_prefix('[') {
        return v6.split(']').next()?.parse().ok();
    }
    node.split(':').next()?.parse().ok()
}

/// What an event records about the request that caused it; each field is
/// empty when not known (work of the service's own, a caller that sent
/// no trace).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventOrigin {
    /// `user:<id>` when a signed-in user made the request.
    pub actor: String,
    pub client_ip: String,
    pub request_id: String,
    /// The W3C trace id, 32 hex digits.
    pub trace_id: String,
}

thread_local! {
    /// The origin of the database work this thread is doing.
    static CURRENT: RefCell<Option<EventOrigin>> = const { RefCell::new(None) };
}

tokio::task_local! {
    /// The origin of work a task does for a request it outlived (a queued
    /// job), see [`carry`].
    static CARRIED: Option<EventOrigin>;
}

/// Runs `work` (done later, for a request since answered) as done for
/// `origin`, taken while serving the request (see
/// [`super::telemetry::task_origin`]).
pub async fn carry<F: std::future::Future>(origin: Option<EventOrigin>, work: F) -> F::Output {
    CARRIED.scope(origin, work).await
}

/// What the task carries for a request it outlived (see [`carry`]).
pub fn carried() -> Option<EventOrigin> {
    CARRIED.try_with(Clone::clone).ok().flatten()
}

/// Runs `work` (database work on a blocking thread) as done for `origin`.
pub fn within<T>(origin: Option<EventOrigin>, work: impl FnOnce() -> T) -> T {
    if origin.is_none() {
        return work();
    }
    let before = CURRENT.replace(origin);
    let result = work();
    CURRENT.set(before);
    result
}

/// The origin of the database work this thread does inside [`within`].
pub fn on_thread() -> Option<EventOrigin> {
    CURRENT.with_borrow(Clone::clone)
}

/// The trace id of a W3C `traceparent` value
/// (`00-<32 hex>-<16 hex>-<2 hex>`), unless it is malformed or all zeros.
pub fn trace_id_of(traceparent: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(traceparent).ok()?;
    let mut parts = text.trim().split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    let valid = trace.len() == 32
        && trace
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && trace.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_match_their_members_only() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.2.3.4".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nonsense").is_none());
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
    }

    #[test]
    fn the_client_is_what_a_vouched_request_forwards_and_the_peer_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::FORWARDED,
            "for=203.0.113.9;proto=http;host=\"a\"".parse().unwrap(),
        );
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            client(loopback, &headers, true),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client(loopback, &headers, false), loopback);
        headers.insert(
            http::header::FORWARDED,
            "for=\"[2001:db8::1]:443\"".parse().unwrap(),
        );
        assert_eq!(
            client(loopback, &headers, true),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        headers.insert(http::header::FORWARDED, "for=unknown".parse().unwrap());
        assert_eq!(client(loopback, &headers, true), loopback);
    }

    #[test]
    fn trace_ids_come_from_well_formed_traceparents_only() {
        assert_eq!(
            trace_id_of(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id_of(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of(b"00-XYZ-00f067aa0ba902b7-01"), None);
    }

    #[test]
    fn work_within_an_origin_sees_it_and_then_the_thread_forgets_it() {
        let origin = EventOrigin {
            actor: "user:ann".into(),
            ..EventOrigin::default()
        };
        let seen = within(Some(origin.clone()), on_thread);
        assert_eq!(seen, Some(origin));
        assert_eq!(on_thread(), None);
    }
}
