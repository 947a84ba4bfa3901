//! Where each node of a Merkle tree lives when every level is stored in one flat buffer,
//! leaves first: the layout the GPU builds, and the index math to read paths out of it.
//! Pure, so it is tested against `flotilla_proof::merkle::Tree` without a GPU.

/// Where every level of a tree lives in one flat buffer, in nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The width of every level, leaves first, up to the root's level of one.
    pub widths: Vec<u64>,
    /// Where each level starts, and the total node count last.
    pub starts: Vec<u64>,
}

impl Layout {
    /// The layout of a tree over `leaf_count` leaves.
    pub fn new(leaf_count: u64) -> Layout {
        assert!(leaf_count > 0, "a tree needs at least one leaf");
        let mut widths = vec![leaf_count];
        while let Some(&width) = widths.last().filter(|&&w| w > 1) {
            widths.push(width.div_ceil(2));
        }
        let mut starts = Vec::with_capacity(widths.len() + 1);
        let mut next = 0;
        for &width in &widths {
            starts.push(next);
            next += width;
        }
        starts.push(next);
        Layout { widths, starts }
    }

    /// Nodes in the whole tree.
    pub fn nodes(&self) -> u64 {
        *self.starts.last().expect("a total")
    }

    /// The root's position.
    pub fn root(&self) -> u64 {
        self.starts[self.widths.len() - 1]
    }

    /// The flat positions of leaf `index`'s path: its sibling at each level from the leaves
    /// up, skipping a level where it has none (as `Tree::path` does).
    pub fn path(&self, mut index: u64) -> Vec<u64> {
        let mut positions = Vec::with_capacity(self.widths.len());
        for (level, &width) in self.widths[..self.widths.len() - 1].iter().enumerate() {
            let sibling = index ^ 1;
            if sibling < width {
                positions.push(self.starts[level] + sibling);
            }
            index /= 2;
        }
        positions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proof::merkle::{Tree, leaf_hash};

    #[test]
    fn paths_read_from_the_flat_layout_are_the_trees_paths() {
        for leaf_count in [1u64, 2, 3, 5, 8, 13, 100] {
            let leaves = (0..leaf_count)
                .map(|i| leaf_hash(&i.to_le_bytes()))
                .collect();
            let tree = Tree::new(leaves);
            let layout = Layout::new(leaf_count);
            let flat: Vec<_> = tree.levels().iter().flatten().copied().collect();
            assert_eq!(layout.nodes(), flat.len() as u64);
            assert_eq!(flat[layout.root() as usize], tree.root());
            let level_sizes: Vec<u64> = tree.levels().iter().map(|l| l.len() as u64).collect();
            assert_eq!(layout.widths, level_sizes);
            for index in 0..leaf_count {
                let read: Vec<_> = layout
                    .path(index)
                    .into_iter()
                    .map(|p| flat[p as usize])
                    .collect();
                assert_eq!(
                    read,
                    tree.path(index as usize),
                    "{leaf_count} leaves, {index}"
                );
            }
        }
    }
}
