//! Sets of block ranges as sorted, disjoint `(start, end)` pairs: what a peer said it holds.

/// Adds `start..end` to sorted, disjoint `ranges`, merging neighbours; returns the parts that
/// were not covered before.
pub fn insert(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) -> Vec<(u64, u64)> {
    if start >= end {
        return Vec::new();
    }
    let mut new = Vec::new();
    let mut at = start;
    for &(s, e) in ranges.iter() {
        if e <= at {
            continue;
        }
        if s >= end {
            break;
        }
        if s > at {
            new.push((at, s));
        }
        at = at.max(e);
    }
    if at < end {
        new.push((at, end));
    }
    let (mut lo, mut hi) = (start, end);
    ranges.retain(|&(s, e)| {
        let touches = s <= hi && e >= lo;
        if touches {
            lo = lo.min(s);
            hi = hi.max(e);
        }
        !touches
    });
    let at = ranges.partition_point(|&(s, _)| s < lo);
    ranges.insert(at, (lo, hi));
    new
}

/// Takes `start..end` out of sorted, disjoint `ranges`.
pub fn remove(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    if start >= end {
        return;
    }
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(s, e) in ranges.iter() {
        if e <= start || s >= end {
            out.push((s, e));
            continue;
        }
        if s < start {
            out.push((s, start));
        }
        if e > end {
            out.push((end, e));
        }
    }
    *ranges = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_only_new_parts_are_returned() {
        let mut r = Vec::new();
        assert_eq!(insert(&mut r, 10, 20), [(10, 20)]);
        assert_eq!(insert(&mut r, 30, 40), [(30, 40)]);
        assert_eq!(insert(&mut r, 15, 35), [(20, 30)]);
        assert_eq!(r, [(10, 40)]);
        assert!(insert(&mut r, 12, 38).is_empty(), "covered already");
        assert_eq!(insert(&mut r, 0, 50), [(0, 10), (40, 50)]);
        assert_eq!(r, [(0, 50)]);
        assert_eq!(insert(&mut r, 60, 61), [(60, 61)]);
        assert_eq!(r, [(0, 50), (60, 61)]);
        assert!(insert(&mut r, 5, 5).is_empty());
        assert!(insert(&mut r, 9, 3).is_empty());
    }

    #[test]
    fn removing_cuts_and_splits() {
        let mut r = vec![(0, 10), (20, 30)];
        remove(&mut r, 5, 25);
        assert_eq!(r, [(0, 5), (25, 30)]);
        remove(&mut r, 26, 27);
        assert_eq!(r, [(0, 5), (25, 26), (27, 30)]);
        remove(&mut r, 0, 100);
        assert!(r.is_empty());
        let mut r = vec![(3, 4)];
        remove(&mut r, 9, 1);
        assert_eq!(r, [(3, 4)]);
    }
}
