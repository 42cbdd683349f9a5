//! A set of block indices kept as disjoint, non-adjacent ranges in an ordered map (start to
//! end): a core's blocks waiting for a peer, a request's blocks not yet answered. A stretch of
//! blocks is one entry however long it is, so queuing, asking for and answering a run cost a
//! few map operations rather than one per block, and a set cut into many pieces (blocks
//! answered out of order, a sparse want) still costs `O(log n)` an operation.

use std::{collections::BTreeMap, ops::Bound};

/// A set of block indices as ranges; see the module docs.
///
/// The map is keyed by each range's end, so that taking blocks from the front of a range (a
/// run asked for, a run answered in order) changes its value in place.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct BlockRanges {
    /// End (exclusive) to start, disjoint and never touching.
    ranges: BTreeMap<u64, u64>,
    /// Blocks in the set.
    len: u64,
}

impl BlockRanges {
    /// The blocks `start..end`.
    pub(super) fn from_range(start: u64, end: u64) -> Self {
        let mut set = Self::default();
        set.insert(start, end);
        set
    }

    /// Whether the set is empty.
    pub(super) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Blocks in the set.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// The first range that ends after `index`: `(start, end)`.
    fn ending_after(&self, index: u64) -> Option<(u64, u64)> {
        self.ranges
            .range((Bound::Excluded(index), Bound::Unbounded))
            .next()
            .map(|(e, s)| (*s, *e))
    }

    /// Whether `index` is in the set.
    #[cfg(test)]
    pub(super) fn contains(&self, index: u64) -> bool {
        self.ending_after(index).is_some_and(|(s, _)| s <= index)
    }

    /// Adds `start..end`, merging with the ranges it touches.
    pub(super) fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut lo, mut hi) = (start, end);
        // The ranges that touch it end at `start` or later and start at `end` or earlier.
        while let Some((&e, &s)) = self.ranges.range(start..).next()
            && s <= end
        {
            lo = lo.min(s);
            hi = hi.max(e);
            self.ranges.remove(&e);
            self.len -= e - s;
        }
        self.ranges.insert(hi, lo);
        self.len += hi - lo;
    }

    /// Takes `start..end` out of the set.
    pub(super) fn remove(&mut self, start: u64, end: u64) {
        self.cut(start, end, |_, _| {});
    }

    /// Takes `start..end` out of the set; returns the ranges that were in it, in order.
    pub(super) fn take(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut taken = Vec::new();
        self.cut(start, end, |s, e| taken.push((s, e)));
        taken
    }

    /// Takes `start..end` out of the set, handing each range that was in it to `taken`, in
    /// order.
    fn cut(&mut self, start: u64, end: u64, mut taken: impl FnMut(u64, u64)) {
        if start >= end {
            return;
        }
        let mut from = start;
        while let Some((s, e)) = self.ending_after(from)
            && s < end
        {
            let (cut_start, cut_end) = (s.max(start), e.min(end));
            if e > end {
                // What follows the cut stays, under the same end.
                if let Some(v) = self.ranges.get_mut(&e) {
                    *v = end;
                }
            } else {
                self.ranges.remove(&e);
            }
            if s < start {
                self.ranges.insert(start, s);
            }
            taken(cut_start, cut_end);
            self.len -= cut_end - cut_start;
            from = cut_end;
            if cut_end == end {
                break;
            }
        }
    }

    /// Takes `index` out of the set; returns whether it was in it.
    pub(super) fn remove_one(&mut self, index: u64) -> bool {
        let Some((&e, s)) = self
            .ranges
            .range_mut((Bound::Excluded(index), Bound::Unbounded))
            .next()
        else {
            return false;
        };
        let start = *s;
        if start > index {
            return false;
        }
        self.len -= 1;
        if index + 1 < e {
            // The common case, a run answered in order: the range starts one further on.
            *s = index + 1;
        } else {
            self.ranges.remove(&e);
        }
        if start < index {
            self.ranges.insert(index, start);
        }
        true
    }

    /// The first stretch of the set within `start..end`, cut to it.
    pub(super) fn first_within(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        if start >= end {
            return None;
        }
        let (s, e) = self.ending_after(start)?;
        (s < end).then(|| (s.max(start), e.min(end)))
    }

    /// Takes every block from `at` on out of the set.
    pub(super) fn split_off(&mut self, at: u64) {
        self.remove(at, u64::MAX);
    }

    /// The ranges, in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(e, s)| (*s, *e))
    }

    /// The blocks, in order.
    pub(super) fn indices(&self) -> impl Iterator<Item = u64> + '_ {
        self.iter().flat_map(|(s, e)| s..e)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// An operation on the set, tried on a plain set of indices beside it.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Remove(u64, u64),
        Take(u64, u64),
        RemoveOne(u64),
        SplitOff(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let range = (0u64..200, 0u64..40).prop_map(|(s, n)| (s, s + n));
        prop_oneof![
            range.clone().prop_map(|(s, e)| Op::Insert(s, e)),
            range.clone().prop_map(|(s, e)| Op::Remove(s, e)),
            range.prop_map(|(s, e)| Op::Take(s, e)),
            (0u64..240).prop_map(Op::RemoveOne),
            (0u64..240).prop_map(Op::SplitOff),
        ]
    }

    /// Runs of consecutive indices of a plain set.
    fn runs(set: &BTreeSet<u64>) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &i in set {
            match out.last_mut() {
                Some((_, e)) if *e == i => *e += 1,
                _ => out.push((i, i + 1)),
            }
        }
        out
    }

    proptest! {
        /// After any operations, the set holds the same blocks as a plain set given the same
        /// operations, as maximal ranges, with the right count; what `take`, `remove_one`
        /// and `first_within` return agrees with it.
        #[test]
        fn ranges_agree_with_a_plain_set(ops in proptest::collection::vec(op(), 1..60)) {
            let mut set = BlockRanges::default();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(s, e) => {
                        set.insert(s, e);
                        model.extend(s..e);
                    }
                    Op::Remove(s, e) => {
                        set.remove(s, e);
                        model.retain(|i| !(s..e).contains(i));
                    }
                    Op::Take(s, e) => {
                        let taken: BTreeSet<u64> =
                            set.take(s, e).into_iter().flat_map(|(s, e)| s..e).collect();
                        let expected: BTreeSet<u64> = model.range(s..e.max(s)).copied().collect();
                        prop_assert_eq!(taken, expected);
                        model.retain(|i| !(s..e).contains(i));
                    }
                    Op::RemoveOne(i) => {
                        prop_assert_eq!(set.remove_one(i), model.remove(&i));
                    }
                    Op::SplitOff(at) => {
                        set.split_off(at);
                        model.retain(|i| *i < at);
                    }
                }
                prop_assert_eq!(set.iter().collect::<Vec<_>>(), runs(&model));
                prop_assert_eq!(set.len(), model.len() as u64);
                prop_assert_eq!(set.is_empty(), model.is_empty());
                prop_assert_eq!(set.first_within(50, 50), None);
                for probe in [0u64, 17, 63, 120, 199] {
                    prop_assert_eq!(set.contains(probe), model.contains(&probe));
                    let within = set.first_within(probe, probe + 30);
                    let first = model.range(probe..probe + 30).next().copied();
                    prop_assert_eq!(within.map(|(s, _)| s), first);
                    if let Some((s, e)) = within {
                        prop_assert!((s..e).all(|i| model.contains(&i)));
                        prop_assert!(e == probe + 30 || !model.contains(&e));
                    }
                }
            }
        }
    }

    #[test]
    fn a_run_answered_in_order_stays_one_range() {
        let mut set = BlockRanges::from_range(10, 20);
        for i in 10..15 {
            assert!(set.remove_one(i));
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(15, 20)]);
        assert!(!set.remove_one(12), "answered already");
        assert_eq!(set.len(), 5);
        assert_eq!(set.take(0, u64::MAX), vec![(15, 20)]);
        assert!(set.is_empty());
    }

    #[test]
    fn the_ends_of_the_index_space_hold() {
        let mut set = BlockRanges::from_range(u64::MAX - 3, u64::MAX);
        assert!(set.contains(u64::MAX - 1));
        assert!(!set.contains(u64::MAX));
        assert!(set.remove_one(u64::MAX - 2));
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![(u64::MAX - 3, u64::MAX - 2), (u64::MAX - 1, u64::MAX)]
        );
        assert!(set.remove_one(u64::MAX - 1));
        assert_eq!(set.len(), 1);
        set.split_off(0);
        assert!(set.is_empty());
        assert_eq!(set.first_within(0, u64::MAX), None);
    }
}
