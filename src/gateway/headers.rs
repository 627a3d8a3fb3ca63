//! The headers a request carries upstream and a response carries back:
//! hop-by-hop headers removed both ways, client-supplied `x-gatehouse-*`
//! headers dropped and the verified identity set in their place, and the
//! proxy headers (`X-Forwarded-*`, `Forwarded`) set, believing a client's
//! own chain only when the peer is a trusted proxy.
//!
//! Field names with an underscore are dropped by default: CGI, WSGI, Rack
//! and PHP servers read `x_gatehouse_user_id` as `X-Gatehouse-User-Id`, so
//! such a name could pose as a field the gateway sets. When they are let
//! through (`gateway.underscores_in_headers`), those that read as a
//! reserved name with `_` taken for `-` are dropped all the same. Method
//! override fields (`X-HTTP-Method-Override` and its kin) are dropped too:
//! an upstream honouring one would take a method the route never allowed.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use bytes::{BufMut as _, BytesMut};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::middleware::token::{Holder, SessionId, Subject};

/// Headers that describe one connection, not the message.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub const USER_ID: HeaderName = HeaderName::from_static("x-gatehouse-user-id");
pub const SESSION_ID: HeaderName = HeaderName::from_static("x-gatehouse-session-id");
/// Set instead of the user's id for a client acting for itself (its own
/// token, from the client credentials grant).
pub const CLIENT_ID: HeaderName = HeaderName::from_static("x-gatehouse-client-id");

pub fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// A client connection's peer address, with its text written once per
/// connection rather than once per request.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    text: HeaderValue,
    /// The protocol the client spoke, as the proxy fields name it.
    proto: &'static [u8],
}

impl Peer {
    /// A client connected from `addr`, over TLS when `secure`.
    pub fn new(addr: SocketAddr, secure: bool) -> Peer {
        let text = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let proto: &[u8] = if secure { b"https" } else { b"http" };
        Peer { addr, text, proto }
    }

    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
}

/// The proxy fields a request carries upstream, in place of any of the
/// same names the client sent: `X-Forwarded-For`, `-Host` and `-Proto`,
/// `Forwarded`, and the verified identity. The HTTP/1.1 wire writes them
/// straight after the request's own fields ([`ProxyFields::write`]); an
/// h2c request gets them in its header map ([`ProxyFields::apply`]).
pub struct ProxyFields {
    forwarded_for: Option<HeaderValue>,
    /// The client's Host, which the upstream does not get as its own.
    host: HeaderValue,
    /// The client's address as `Forwarded` writes it.
    node: Node,
    /// The verified user (or client) and session, written as text where
    /// they go.
    identity: Option<(Subject, SessionId)>,
    /// `http` or `https`.
    proto: &'static [u8],
    /// The gateway's service credential, for a platform service (see
    /// `kernel::origin`): what makes it believe the `Forwarded` address.
    credential: Option<HeaderValue>,
}

/// The field a service credential travels in.
const CREDENTIAL: HeaderName = HeaderName::from_static(crate::kernel::credentials::HEADER);

enum Node {
    Peer(HeaderValue),
    V4(std::net::Ipv4Addr),
    V6(std::net::Ipv6Addr),
}

/// Fields that ask an upstream to take another method than the request's.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether a client's field `name` (lower case, as a `HeaderName` holds
/// it) stays behind: one the gateway sets itself, a method override, or,
/// unless `underscores` lets them through, any name with an underscore.
/// A name with underscores is judged as it reads with `-` in their place.
pub fn withheld(name: &str, underscores: bool) -> bool {
    if !name.contains('_') {
        return reserved(name);
    }
    if !underscores {
        return true;
    }
    reserved(&name.replace('_', "-"))
}

/// Whether `name` (lower case, `-` separated) is a field the gateway sets
/// or drops itself. A service call's credential never comes from a client.
fn reserved(name: &str) -> bool {
    name.starts_with("x-gatehouse-")
        || name == crate::kernel::credentials::HEADER
        || METHOD_OVERRIDES.contains(&name)
        || name.starts_with("x-forwarded-")
        || name == "forwarded"
        || name == "x-real-ip"
}

/// Prepares a client's request headers to go upstream: hop-by-hop,
/// client-supplied `x-gatehouse-*` and other withheld fields (see
/// [`withheld`]) are removed, and the proxy fields that replace the
/// client's own are returned.
pub fn upstream_headers(
    headers: &mut HeaderMap,
    peer: &Peer,
    client: IpAddr,
    caller: Option<&Holder>,
    peer_trusted: bool,
    underscores: bool,
    credential: Option<HeaderValue>,
) -> ProxyFields {
    let forwarded_for = if peer_trusted {
        let mut chain: Vec<String> = forwarded_for(headers)
            .iter()
            .map(ToString::to_string)
            .collect();
        chain.push(peer.ip().to_string());
        HeaderValue::from_str(&chain.join(", ")).ok()
    } else {
        Some(peer.text.clone())
    };
    strip_hop_by_hop(headers);
    // Collecting none allocates nothing.
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| withheld(k.as_str(), underscores))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
    let host = headers
        .get(header::HOST)
        // Checked on arrival (see `kernel::http::wire`); checked again, as it is
        // written inside a quoted string.
        .filter(|v| crate::kernel::http::wire::valid_host(v.as_bytes()))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""));
    let node = match client {
        IpAddr::V4(_) if client == peer.ip() => Node::Peer(peer.text.clone()),
        IpAddr::V4(v4) => Node::V4(v4),
        IpAddr::V6(v6) => Node::V6(v6),
    };
    let identity = caller.map(|c| (c.subject(), c.session_id()));
    crate::kernel::telemetry::inject_headers(headers);
    ProxyFields {
        forwarded_for,
        host,
        node,
        identity,
        proto: peer.proto,
        credential,
    }
}

impl ProxyFields {
    /// Whether a request field of this name gives way to the proxy's own
    /// (the upstream's Host is the wire's to write).
    pub fn replaces(name: &HeaderName) -> bool {
        name == header::HOST
            || name == header::FORWARDED
            || name == X_FORWARDED_FOR
            || name == X_FORWARDED_HOST
            || name == X_FORWARDED_PROTO
            || name == USER_ID
            || name == CLIENT_ID
            || name == SESSION_ID
            || name == CREDENTIAL
    }

    /// The fields in the order they are written: each name, with what
    /// writes its value into a buffer.
    fn each(&self, mut field: impl FnMut(&HeaderName, &dyn Fn(&mut BytesMut))) {
        field(&X_FORWARDED_HOST, &|out| {
            out.put_slice(self.host.as_bytes())
        });
        if let Some(chain) = &self.forwarded_for {
            field(&X_FORWARDED_FOR, &|out| out.put_slice(chain.as_bytes()));
        }
        field(&X_FORWARDED_PROTO, &|out| out.put_slice(self.proto));
        field(&header::FORWARDED, &|out| self.forwarded(out));
        if let Some((subject, session)) = &self.identity {
            let text = |id: uuid::Uuid, out: &mut BytesMut| {
                let mut buffer = uuid::Uuid::encode_buffer();
                out.put_slice(id.hyphenated().encode_lower(&mut buffer).as_bytes());
            };
            let name = match subject {
                Subject::User(_) => &USER_ID,
                Subject::Client(_) => &CLIENT_ID,
            };
            field(name, &|out| text(subject.as_uuid(), out));
            field(&SESSION_ID, &|out| text(session.as_uuid(), out));
        }
        if let Some(credential) = &self.credential {
            field(&CREDENTIAL, &|out| out.put_slice(credential.as_bytes()));
        }
    }

    /// Writes the `Forwarded` value: as bytes, with no formatting machinery
    /// for the common IPv4 peer.
    fn forwarded(&self, out: &mut BytesMut) {
        match &self.node {
            Node::Peer(text) => {
                out.put_slice(b"for=");
                out.put_slice(text.as_bytes());
            }
            Node::V4(v4) => {
                let _ = write!(out, "for={v4}");
            }
            Node::V6(v6) => {
                let _ = write!(out, "for=\"[{v6}]\"");
            }
        }
        out.put_slice(b";proto=");
        out.put_slice(self.proto);
        out.put_slice(b";host=\"");
        out.put_slice(self.host.as_bytes());
        out.put_slice(b"\"");
    }

    /// Writes the fields as HTTP/1.1 header lines, each value straight
    /// into `out`.
    pub fn write(&self, out: &mut BytesMut) {
        self.each(|name, value| {
            out.put_slice(name.as_str().as_bytes());
            out.put_slice(b": ");
            value(out);
            out.put_slice(b"\r\n");
        });
    }

    /// Puts the fields into `headers` in place of the client's, and takes
    /// the client's Host out.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.remove(header::HOST);
        self.each(|name, value| {
            let mut text = BytesMut::new();
            value(&mut text);
            if let Ok(value) = HeaderValue::from_maybe_shared(text.freeze()) {
                headers.insert(name.clone(), value);
            }
        });
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: look before touching anything.
    if !headers
        .keys()
        .any(|k| k == header::UPGRADE || HOP_BY_HOP.contains(k))
    {
        return;
    }
    // `TE: trailers` alone is end to end in effect: gRPC needs it upstream.
    let trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.into_iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscored_names_stay_behind_or_are_read_as_dashes() {
        assert!(withheld("x_custom", false));
        assert!(!withheld("x_custom", true));
        for reserved in [
            "x_gatehouse_user_id",
            "x-gatehouse_session-id",
            "x_forwarded_for",
            "x_http_method_override",
            "gatehouse-service-token",
            "gatehouse_service_token",
        ] {
            assert!(withheld(reserved, true), "{reserved}");
        }
        assert!(!withheld("x-custom", false));
        assert!(!withheld("authorization", false));
    }

    #[test]
    fn clients_cannot_forge_identity_or_hop_by_hop_headers() {
        let mut incoming = HeaderMap::new();
        incoming.insert("x-gatehouse-user-id", HeaderValue::from_static("admin"));
        incoming.insert("x-gatehouse-anything", HeaderValue::from_static("x"));
        incoming.insert("connection", HeaderValue::from_static("close, x-secret"));
        incoming.insert("x-secret", HeaderValue::from_static("1"));
        incoming.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        incoming.insert("host", HeaderValue::from_static("api.example.org"));
        incoming.insert("te", HeaderValue::from_static("trailers"));
        incoming.insert("x_gatehouse_user_id", HeaderValue::from_static("admin"));
        incoming.insert("x-http-method-override", HeaderValue::from_static("DELETE"));
        incoming.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let from = Peer::new(SocketAddr::new(peer, 40000), false);
        let upstream = |incoming: &HeaderMap, client: IpAddr, trusted: bool| {
            let mut headers = incoming.clone();
            let fields = upstream_headers(&mut headers, &from, client, None, trusted, false, None);
            // The wire writes the same fields as the header map gets.
            let mut wire = BytesMut::new();
            fields.write(&mut wire);
            let mut applied = HeaderMap::new();
            fields.apply(&mut applied);
            let mut expected = String::new();
            for (name, value) in &applied {
                expected.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
            }
            assert_eq!(String::from_utf8(wire.to_vec()).unwrap(), expected);
            fields.apply(&mut headers);
            headers
        };
        let out = upstream(&incoming, peer, false);
        // `TE: trailers` travels (gRPC needs it); other TE values do not.
        assert_eq!(out["te"], "trailers");
        incoming.insert("te", HeaderValue::from_static("gzip"));
        assert!(upstream(&incoming, peer, false).get("te").is_none());
        assert!(out.get("x-gatehouse-user-id").is_none());
        assert!(out.get("x-gatehouse-anything").is_none());
        assert!(out.get("x_gatehouse_user_id").is_none());
        assert!(out.get("x-http-method-override").is_none());
        assert!(out.get("x-real-ip").is_none());
        assert!(out.get("x-secret").is_none());
        assert!(out.get("connection").is_none());
        assert_eq!(out["x-forwarded-for"], "203.0.113.9");
        assert_eq!(out["x-forwarded-host"], "api.example.org");
        assert_eq!(
            out["forwarded"],
            "for=203.0.113.9;proto=http;host=\"api.example.org\""
        );
        // Behind a trusted proxy, its chain is kept and extended.
        let out = upstream(&incoming, "6.6.6.6".parse().unwrap(), true);
        assert_eq!(out["x-forwarded-for"], "6.6.6.6, 203.0.113.9");
        assert_eq!(
            out["forwarded"],
            "for=6.6.6.6;proto=http;host=\"api.example.org\""
        );
        assert_eq!(out["x-forwarded-proto"], "http");
        // A client that came over TLS.
        let secure = Peer::new(SocketAddr::new(peer, 40000), true);
        let mut headers = incoming.clone();
        upstream_headers(&mut headers, &secure, peer, None, false, false, None).apply(&mut headers);
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(
            headers["forwarded"],
            "for=203.0.113.9;proto=https;host=\"api.example.org\""
        );
    }
}
