//! How events go to the broker: the record an event becomes, the
//! partition its subject picks, and how a relay's batch is cut into
//! produce requests.

use std::collections::BTreeMap;

use prost::Message as _;
use rskafka::record::Record;

use super::super::bus::Envelope;

/// The most a produce request's records add up to. rskafka writes a
/// request's length and its body through an 8 KiB buffer and does not set
/// `TCP_NODELAY`: a larger body goes out in a second write, which Nagle's
/// algorithm holds until the broker acknowledges the first, and a Linux
/// broker delays that acknowledgement by up to 40 ms. A request that fits
/// the buffer, with room for its headers, goes out in one write and is
/// answered at once.
const REQUEST_RECORD_BYTES: usize = 7 * 1024;
/// About what a record, or a header of one, adds to a request besides its
/// bytes (lengths, offsets, timestamp).
const RECORD_OVERHEAD: usize = 24;
/// The partition of `count` that `subject`'s events go to: FNV-1a of the
/// subject, so every producer agrees without asking.
pub(super) fn partition_of(subject: &str, count: i32) -> i32 {
    let hash = subject
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    let count = u64::try_from(count.max(1)).unwrap_or(1);
    i32::try_from(hash % count).unwrap_or(0)
}

/// `event` as a record: keyed by its subject, its type in a header.
pub(super) fn record(event: &Envelope) -> Record {
    Record {
        key: Some(event.subject.as_bytes().to_vec()),
        value: Some(event.encode_to_vec()),
        headers: BTreeMap::from([("type".to_owned(), event.r#type.as_bytes().to_vec())]),
        timestamp: chrono::DateTime::from_timestamp_millis(event.occurred_at_unix_ms)
            .unwrap_or_default(),
    }
}

/// How many records each produce request of `records` carries, in order:
/// as many as add up to at most [`REQUEST_RECORD_BYTES`], and a larger
/// record alone.
pub(super) fn request_sizes(records: &[Record]) -> Vec<usize> {
    let mut sizes = Vec::new();
    let (mut count, mut bytes) = (0, 0);
    for record in records {
        let len = RECORD_OVERHEAD
            + record.key.as_ref().map_or(0, Vec::len)
            + record.value.as_ref().map_or(0, Vec::len)
            + record
                .headers
                .iter()
                .map(|(name, value)| RECORD_OVERHEAD + name.len() + value.len())
                .sum::<usize>();
        if count > 0 && bytes + len > REQUEST_RECORD_BYTES {
            sizes.push(count);
            (count, bytes) = (0, 0);
        }
        count += 1;
        bytes += len;
    }
    if count > 0 {
        sizes.push(count);
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_always_goes_to_the_same_partition_and_subjects_spread() {
        assert_eq!(partition_of("user-1", 3), partition_of("user-1", 3));
        let used: std::collections::BTreeSet<i32> = (0..100)
            .map(|i| partition_of(&format!("user-{i}"), 3))
            .collect();
        assert_eq!(used, [0, 1, 2].into());
        assert_eq!(partition_of("anything", 1), 0);
    }

    fn event_of(value_bytes: usize) -> Envelope {
        Envelope {
            id: "e".into(),
            r#type: "identity.user.updated".into(),
            source: "identity".into(),
            subject: "user-1".into(),
            payload: vec![7; value_bytes],
            ..Envelope::default()
        }
    }

    #[test]
    fn a_batch_is_cut_into_requests_under_eight_kib_in_order() {
        // A relay pass: 100 events of a few hundred bytes.
        let records: Vec<Record> = (0..100).map(|_| record(&event_of(300))).collect();
        let sizes = request_sizes(&records);
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert!(sizes.len() > 1, "{sizes:?}");
        let mut start = 0;
        for size in &sizes {
            let bytes: usize = records[start..start + size]
                .iter()
                .map(|r| r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len))
                .sum();
            assert!(bytes < 8 * 1024 - 1024, "a request of {bytes} bytes");
            start += size;
        }
        // An event larger than a request goes alone, between the others.
        let mixed = [
            record(&event_of(10)),
            record(&event_of(20_000)),
            record(&event_of(10)),
        ];
        assert_eq!(request_sizes(&mixed), [1, 1, 1]);
        let small = [record(&event_of(10)), record(&event_of(10))];
        assert_eq!(request_sizes(&small), [2]);
        assert!(request_sizes(&[]).is_empty());
    }
}
