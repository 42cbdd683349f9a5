//! Proofs for a run of consecutive blocks sent in order: each proof carries only the nodes the
//! requester cannot have yet, so a run costs about one node per block instead of a full path.

use super::flat;

/// How many uncle levels the proof of block `index` needs when the requester (whose tree has
/// `length` blocks) has verified blocks `start..index` of the same run, in order, before it.
///
/// The requester trusts the roots of its tree, and every right-hand sibling that an earlier
/// proof of the run delivered as an uncle: a right child whose leftmost block lies after
/// `start`. The first block of a run needs the path up to its root.
pub fn run_proof_levels(start: u64, index: u64, length: u64) -> u64 {
    debug_assert!(start <= index && index < length);
    // The root above the block: the first whose span reaches it.
    let root = flat::full_roots_iter(2 * length).find(|r| flat::right_span(*r) >= 2 * index);
    levels_below(start, index, |node| root.is_none_or(|r| r == node))
}

/// Levels a proof of block `index` in a run from `start` climbs: up to the first node that
/// `is_root`, or to the first the run delivered already.
fn levels_below(start: u64, index: u64, is_root: impl Fn(u64) -> bool) -> u64 {
    let mut node = 2 * index;
    let mut levels = 0;
    loop {
        if is_root(node) || levels == 64 {
            return levels;
        }
        let right_child = flat::offset(node) % 2 == 1;
        if index > start && right_child && flat::left_span(node) / 2 > start {
            return levels;
        }
        node = flat::parent(node);
        levels += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_block_of_a_run_goes_to_its_root() {
        // 8 blocks: one root (index 7), 3 levels above each leaf.
        assert_eq!(run_proof_levels(0, 0, 8), 3);
        assert_eq!(run_proof_levels(5, 5, 8), 3);
        // 6 blocks: roots 3 (blocks 0..4) and 9 (blocks 4..6).
        assert_eq!(run_proof_levels(4, 4, 6), 1);
    }

    #[test]
    fn later_blocks_need_only_what_earlier_proofs_left_out() {
        // Block 1 was delivered as the uncle of block 0.
        assert_eq!(run_proof_levels(0, 1, 8), 0);
        // Block 2 needs its sibling (block 3); their parent came as an uncle of block 0.
        assert_eq!(run_proof_levels(0, 2, 8), 1);
        assert_eq!(run_proof_levels(0, 3, 8), 0);
        assert_eq!(run_proof_levels(0, 4, 8), 2);
        // Starting at 1: block 2's parent (blocks 2..4) is a right child after the start.
        assert_eq!(run_proof_levels(1, 2, 8), 1);
    }

    /// The root found without collecting the roots is the one in the roots list that holds
    /// the block: the same levels as a walk up to any node of that list (as before the roots
    /// went uncollected), for every run of every tree up to 130 blocks.
    #[test]
    fn stops_at_the_root_of_the_list_for_every_small_tree() {
        let reference = |start: u64, index: u64, length: u64| {
            let roots = flat::full_roots(2 * length);
            levels_below(start, index, |node| roots.contains(&node))
        };
        for length in 1..=130 {
            for index in 0..length {
                for start in (0..=index).step_by(3).chain([index]) {
                    assert_eq!(
                        run_proof_levels(start, index, length),
                        reference(start, index, length),
                        "start {start}, index {index}, length {length}"
                    );
                }
            }
        }
    }
}
