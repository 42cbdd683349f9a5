//! Flat-tree math: a binary tree laid out in one array, leaves at even indices.
//!
//! Block `i` is leaf `2i`; a node's depth is its number of trailing one bits. All functions take
//! indices below [`MAX_INDEX`]; callers validate untrusted input against it first.

/// Largest node index any function here is used with (2^60); keeps every computation in range.
pub const MAX_INDEX: u64 = 1 << 60;

/// Depth of a node: leaves are 0.
pub fn depth(index: u64) -> u32 {
    (!index).trailing_zeros()
}

/// Position of a node among the nodes of its depth.
pub fn offset(index: u64) -> u64 {
    index >> (depth(index) + 1)
}

/// The node at `depth` and `offset`.
pub fn index(depth: u32, offset: u64) -> u64 {
    (offset << (depth + 1)) | ((1u64 << depth) - 1)
}

/// The parent of a node.
pub fn parent(i: u64) -> u64 {
    let d = depth(i);
    index(d + 1, offset(i) >> 1)
}

/// The sibling of a node.
pub fn sibling(i: u64) -> u64 {
    let d = depth(i);
    index(d, offset(i) ^ 1)
}

/// The left and right children of a parent node, `None` for a leaf.
pub fn children(i: u64) -> Option<(u64, u64)> {
    let d = depth(i);
    if d == 0 {
        return None;
    }
    let o = offset(i) * 2;
    Some((index(d - 1, o), index(d - 1, o + 1)))
}

/// The leftmost leaf below a node.
pub fn left_span(i: u64) -> u64 {
    let d = depth(i);
    if d == 0 { i } else { offset(i) * (2u64 << d) }
}

/// The rightmost leaf below a node.
pub fn right_span(i: u64) -> u64 {
    let d = depth(i);
    if d == 0 {
        i
    } else {
        (offset(i) + 1) * (2u64 << d) - 2
    }
}

/// Number of blocks below a node.
pub fn count_leaves(i: u64) -> u64 {
    1u64 << depth(i)
}

/// The roots of the full binary trees covering leaves `[0, head)` (`head` even): the roots of a
/// tree of `head / 2` blocks, left to right.
pub fn full_roots(head: u64) -> Vec<u64> {
    full_roots_iter(head).collect()
}

/// The roots of [`full_roots`], left to right, without collecting them.
pub fn full_roots_iter(head: u64) -> impl Iterator<Item = u64> {
    let mut remaining = head >> 1;
    let mut start = 0u64;
    std::iter::from_fn(move || {
        if remaining == 0 {
            return None;
        }
        let factor = 1u64 << (63 - remaining.leading_zeros());
        let root = start + factor - 1;
        start += 2 * factor;
        remaining -= factor;
        Some(root)
    })
}

/// A movable position in the flat tree, tracking the width of the current subtree
/// (`factor` = 2 × blocks below it), like flat-tree's iterator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Current node.
    pub index: u64,
    /// Offset of the current node at its depth.
    pub offset: u64,
    /// Twice the number of leaves below the current node.
    pub factor: u64,
}

impl Cursor {
    /// A cursor at `index`.
    pub fn new(index: u64) -> Self {
        let mut c = Self {
            index: 0,
            offset: 0,
            factor: 2,
        };
        c.seek(index);
        c
    }

    /// Moves to `index`.
    pub fn seek(&mut self, index: u64) {
        self.index = index;
        self.offset = offset(index);
        self.factor = 2u64 << depth(index);
    }

    /// Whether the current node is a left child.
    pub fn is_left(&self) -> bool {
        self.offset & 1 == 0
    }

    /// Moves to the sibling and returns its index.
    pub fn sibling(&mut self) -> u64 {
        if self.is_left() {
            self.index += self.factor;
            self.offset += 1;
        } else if self.offset > 0 {
            self.index -= self.factor;
            self.offset -= 1;
        }
        self.index
    }

    /// Moves to the parent and returns its index.
    pub fn parent(&mut self) -> u64 {
        if self.offset & 1 == 1 {
            self.index -= self.factor / 2;
            self.offset = (self.offset - 1) / 2;
        } else {
            self.index += self.factor / 2;
            self.offset /= 2;
        }
        self.factor *= 2;
        self.index
    }

    /// Moves to the left child (stays on a leaf) and returns its index.
    pub fn left_child(&mut self) -> u64 {
        if self.factor == 2 {
            return self.index;
        }
        self.factor /= 2;
        self.index -= self.factor / 2;
        self.offset *= 2;
        self.index
    }

    /// Whether `index` lies in the subtree of the current node.
    pub fn contains(&self, index: u64) -> bool {
        let half = self.factor / 2;
        if index > self.index {
            index < self.index + half
        } else if index < self.index {
            index + half > self.index
        } else {
            true
        }
    }

    /// Leftmost leaf below the current node.
    pub fn left_span(&self) -> u64 {
        self.index + 1 - self.factor / 2
    }

    /// Rightmost leaf below the current node.
    pub fn right_span(&self) -> u64 {
        self.index + self.factor / 2 - 1
    }

    /// From a leaf, grows the cursor to the largest full root starting here that fits before
    /// leaf `head`; false when no such root exists.
    pub fn full_root(&mut self, head: u64) -> bool {
        if head <= self.index || self.index & 1 == 1 {
            return false;
        }
        while head > self.index + self.factor + self.factor / 2 {
            self.index += self.factor / 2;
            self.factor *= 2;
            self.offset /= 2;
        }
        true
    }

    /// Moves to the first leaf right of the current subtree.
    pub fn next_tree(&mut self) -> u64 {
        self.index = self.index + self.factor / 2 + 1;
        self.offset = self.index / 2;
        self.factor = 2;
        self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_math() {
        assert_eq!(parent(0), 1);
        assert_eq!(parent(2), 1);
        assert_eq!(parent(1), 3);
        assert_eq!(parent(5), 3);
        assert_eq!(sibling(0), 2);
        assert_eq!(sibling(3), 11);
        assert_eq!(children(3), Some((1, 5)));
        assert_eq!(children(4), None);
        assert_eq!(left_span(7), 0);
        assert_eq!(right_span(7), 14);
        assert_eq!(left_span(11), 8);
        assert_eq!(right_span(11), 14);
        assert_eq!(count_leaves(7), 8);
        assert_eq!(count_leaves(11), 4);
        assert_eq!(full_roots(20), vec![7, 17]);
        assert_eq!(full_roots(14), vec![3, 9, 12]);
        assert_eq!(full_roots(0), Vec::<u64>::new());
    }

    #[test]
    fn cursor_matches_functions() {
        for i in 0..200u64 {
            let mut c = Cursor::new(i);
            assert_eq!(c.left_span(), left_span(i));
            assert_eq!(c.right_span(), right_span(i));
            assert_eq!(c.sibling(), sibling(i));
            c.seek(i);
            assert_eq!(c.parent(), parent(i));
            c.seek(i);
            if let Some((l, _)) = children(i) {
                assert_eq!(c.left_child(), l);
            }
        }
        let mut c = Cursor::new(0);
        let mut roots = vec![];
        while c.full_root(20) {
            roots.push(c.index);
            c.next_tree();
        }
        assert_eq!(roots, full_roots(20));
    }
}
