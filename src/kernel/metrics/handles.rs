//! Each thread's handles to the labelled metrics it counts in: label sets
//! resolved once per thread, counts kept in memory of the thread's own and
//! passed on to the metrics when they are read, when a table starts over,
//! and when its thread ends.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus::IntCounter;
use prometheus::local::LocalHistogram;

use crate::kernel::locks::lock;

/// Most label sets a thread keeps handles for; past it the table starts over.
pub(super) const HANDLES_PER_THREAD: usize = 4096;

/// Which labelled metrics a handle table entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Family {
    Request,
    Upstream,
}

/// The metrics behind one label set, resolved once, with the counts this
/// thread has made and not yet passed on to them.
pub(super) enum Handles {
    Request {
        count: Pending,
        duration: LocalHistogram,
    },
    Upstream(Pending),
}

impl Handles {
    pub(super) fn flush(&mut self) {
        match self {
            Handles::Request { count, duration } => {
                count.flush();
                duration.flush();
            }
            Handles::Upstream(count) => count.flush(),
        }
    }
}

/// Counts one answered request that took `elapsed` on request handles.
pub(super) fn count_request(handles: &mut Handles, elapsed: Duration) {
    if let Handles::Request { count, duration } = handles {
        count.add(1);
        duration.observe(elapsed.as_secs_f64());
    }
}

impl Drop for Handles {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A counter's increments not yet passed on to it.
pub(super) struct Pending {
    pub(super) counter: IntCounter,
    pub(super) pending: u64,
}

impl Pending {
    pub(super) fn new(counter: IntCounter) -> Pending {
        Pending {
            counter,
            pending: 0,
        }
    }

    pub(super) fn add(&mut self, n: u64) {
        self.pending += n;
    }

    pub(super) fn flush(&mut self) {
        if self.pending > 0 {
            self.counter.inc_by(std::mem::take(&mut self.pending));
        }
    }
}

/// A handle table entry's key, owned.
pub(super) struct LabelSet {
    pub(super) metrics: u64,
    pub(super) family: Family,
    pub(super) labels: Box<[Box<str>]>,
}

/// The same key, borrowed from the caller, so a lookup allocates nothing.
pub(super) struct LabelRef<'a> {
    pub(super) metrics: u64,
    pub(super) family: Family,
    pub(super) labels: &'a [&'a str],
}

pub(super) fn hash_labels<'a, H: Hasher>(
    metrics: u64,
    family: Family,
    labels: impl ExactSizeIterator<Item = &'a str>,
    state: &mut H,
) {
    metrics.hash(state);
    family.hash(state);
    state.write_usize(labels.len());
    for label in labels {
        label.hash(state);
    }
}

impl Hash for LabelSet {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_labels(
            self.metrics,
            self.family,
            self.labels.iter().map(|l| &**l),
            state,
        );
    }
}

impl Hash for LabelRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_labels(
            self.metrics,
            self.family,
            self.labels.iter().copied(),
            state,
        );
    }
}

impl PartialEq for LabelSet {
    fn eq(&self, other: &Self) -> bool {
        (self.metrics, self.family) == (other.metrics, other.family) && self.labels == other.labels
    }
}

impl Eq for LabelSet {}

impl hashbrown::Equivalent<LabelSet> for LabelRef<'_> {
    fn equivalent(&self, key: &LabelSet) -> bool {
        self.metrics == key.metrics
            && self.family == key.family
            && self.labels.len() == key.labels.len()
            && self
                .labels
                .iter()
                .zip(key.labels.iter())
                .all(|(a, b)| same_text(a, b))
    }
}

/// Whether two labels say the same. Labels are mostly static strings or
/// strings a route keeps, met again at the same address, so that is
/// checked before the bytes.
pub(super) fn same_text(a: &str, b: &str) -> bool {
    (std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()) || a == b
}

/// A label set of static text, known by where its labels lie: static text
/// is never freed, so the same places always hold the same text. The same
/// text elsewhere is another key for the same metrics, counted apart and
/// passed on to them alike.
#[derive(Clone, Copy)]
pub(super) struct PlaceKey {
    pub(super) metrics: u64,
    pub(super) family: Family,
    /// Each label's address and length: all that tells keys apart.
    pub(super) places: [(usize, usize); 4],
    pub(super) labels: [&'static str; 4],
}

impl PartialEq for PlaceKey {
    fn eq(&self, other: &Self) -> bool {
        (self.metrics, self.family, self.places) == (other.metrics, other.family, other.places)
    }
}

impl Eq for PlaceKey {}

impl Hash for PlaceKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.metrics, self.family, self.places).hash(state);
    }
}

/// A key a thread's handles are found by.
pub(super) trait TableKey {
    fn family(&self) -> Family;
    fn labels(&self) -> &[&str];
    fn find<'t>(&self, table: &'t mut HandleTable) -> Option<&'t mut Handles>;
    /// Keeps `handles` in `table` under this key.
    fn keep(&self, table: &mut HandleTable, handles: Handles);
}

impl TableKey for LabelRef<'_> {
    fn family(&self) -> Family {
        self.family
    }

    fn labels(&self) -> &[&str] {
        self.labels
    }

    fn find<'t>(&self, table: &'t mut HandleTable) -> Option<&'t mut Handles> {
        table.by_text.get_mut(self)
    }

    fn keep(&self, table: &mut HandleTable, handles: Handles) {
        let owned = LabelSet {
            metrics: self.metrics,
            family: self.family,
            labels: self.labels.iter().map(|l| Box::from(*l)).collect(),
        };
        table.by_text.insert(owned, handles);
    }
}

impl TableKey for PlaceKey {
    fn family(&self) -> Family {
        self.family
    }

    fn labels(&self) -> &[&str] {
        &self.labels
    }

    fn find<'t>(&self, table: &'t mut HandleTable) -> Option<&'t mut Handles> {
        table.by_place.get_mut(self)
    }

    fn keep(&self, table: &mut HandleTable, handles: Handles) {
        table.by_place.insert(*self, handles);
    }
}

/// A thread's handles: by the text of their labels, and, for labels of
/// static text, by where the labels lie.
#[derive(Default)]
pub(super) struct HandleTable {
    pub(super) by_text: hashbrown::HashMap<LabelSet, Handles, foldhash::fast::RandomState>,
    pub(super) by_place: hashbrown::HashMap<PlaceKey, Handles, foldhash::fast::RandomState>,
}

impl HandleTable {
    pub(super) fn len(&self) -> usize {
        self.by_text.len() + self.by_place.len()
    }

    pub(super) fn clear(&mut self) {
        self.by_text.clear();
        self.by_place.clear();
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Handles> {
        self.by_text.values_mut().chain(self.by_place.values_mut())
    }
}

thread_local! {
    /// Each thread's handles to the labelled metrics it has counted in,
    /// with its counts not yet passed on.
    ///
    /// Resolving a label set (`with_label_values`) hashes every label and
    /// takes a lock that every thread shares; and counting straight into a
    /// metric is an atomic write to memory every thread writes, which the
    /// cores then pass back and forth. Here a thread resolves each label
    /// set once and counts in memory of its own, behind a lock no other
    /// thread takes but to flush. Counts reach the metrics when they are
    /// read ([`Metrics::flush`]), when the table starts over, and when the
    /// thread ends.
    pub(super) static HANDLES: Arc<Mutex<HandleTable>> = {
        let table = Arc::default();
        let mut tables = lock(&THREAD_TABLES);
        tables.retain(|t| t.strong_count() > 0);
        tables.push(Arc::downgrade(&table));
        table
    };
}

/// Every thread's handle table, for [`Metrics::flush`].
pub(super) static THREAD_TABLES: Mutex<Vec<Weak<Mutex<HandleTable>>>> = Mutex::new(Vec::new());
