//! Building an account's RFC 6962 Merkle tree and its proofs from stored complete subtrees.
//!
//! Only complete subtrees are ever stored: node `(level, index)` is the root of the
//! `2^level` leaves starting at `index << level`, and it never changes once its last leaf is
//! appended. An append computes every subtree it completes (one on average, `log2 n` at
//! most) from the account's frontier: the roots of the complete subtrees that make up the
//! tree, largest first (one per set bit of its size). Of those it stores only the ones of
//! [`STORED_FROM_LEVEL`] and up, about `2^(1 - STORED_FROM_LEVEL)` rows per event instead of
//! two: the rows are what the trees cost the append path. A node below that level is
//! recomputed when a proof needs it, from the leaves of its *block* (the `2^STORED_FROM_LEVEL`
//! leaves under one stored node of that level), which are the account's events' hashes.
//!
//! Any tree of a size `n` up to the current one, and any proof about it, is made of the
//! complete subtrees along the right edge of `n` plus siblings along one path: `O(log n)`
//! stored nodes, fetched in one read, and the leaves of at most two blocks. The proofs follow the recursive definitions of RFC 6962
//! section 2.1 (`PATH` and `PROOF`); the verifiers in `taskledger_events::merkle` follow the
//! iterative algorithms of RFC 9162 instead, so the two check each other.

use std::collections::{BTreeSet, HashMap};

use taskledger_events::merkle::{empty_root, node_hash, Hash};

/// The lowest level of the tree that is stored. Level 4 writes an eighth of a row per event
/// and makes a proof read at most two blocks of 16 events.
pub const STORED_FROM_LEVEL: u32 = 4;

/// Leaves in a block: the leaves under one node of [`STORED_FROM_LEVEL`].
pub const BLOCK_LEAVES: u64 = 1 << STORED_FROM_LEVEL;

/// Whether a node is stored, rather than recomputed from its block's leaves.
pub fn is_stored(id: NodeId) -> bool {
    id.level >= STORED_FROM_LEVEL
}

/// The block whose leaves a node below [`STORED_FROM_LEVEL`] is made of.
pub fn block_of(id: NodeId) -> u64 {
    id.index >> (STORED_FROM_LEVEL - id.level)
}

/// Every complete subtree below [`STORED_FROM_LEVEL`] of a block, from its leaves in order
/// (all of them, or the first ones of a block not yet complete).
pub fn block_nodes(block: u64, leaves: &[Hash]) -> Vec<(NodeId, Hash)> {
    let mut frontier = Frontier::empty();
    let mut nodes = Vec::with_capacity(leaves.len() * 2);
    for leaf in leaves.iter().take(BLOCK_LEAVES as usize) {
        frontier.push(*leaf, &mut nodes);
    }
    nodes
        .into_iter()
        .filter(|(id, _)| id.level < STORED_FROM_LEVEL)
        .map(|(id, hash)| {
            let shift = STORED_FROM_LEVEL - id.level;
            (
                NodeId {
                    level: id.level,
                    index: (block << shift) + id.index,
                },
                hash,
            )
        })
        .collect()
}

/// A stored complete subtree: the `2^level` leaves from `index << level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub level: u32,
    pub index: u64,
}

/// The roots of the complete subtrees that make up a tree of `size` leaves, largest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("a tree of {size} leaves has {expected} frontier hashes, not {found}")]
    BadFrontier {
        size: u64,
        expected: u32,
        found: usize,
    },
    #[error("stored node {level}/{index} is missing")]
    MissingNode { level: u32, index: u64 },
    #[error("{0}")]
    OutOfRange(String),
}

impl Frontier {
    pub fn empty() -> Frontier {
        Frontier {
            size: 0,
            hashes: Vec::new(),
        }
    }

    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Frontier, TreeError> {
        if hashes.len() != size.count_ones() as usize {
            return Err(TreeError::BadFrontier {
                size,
                expected: size.count_ones(),
                found: hashes.len(),
            });
        }
        Ok(Frontier { size, hashes })
    }

    /// The frontier as stored: its hashes in hex, concatenated.
    pub fn from_stored(size: u64, text: &str) -> Result<Frontier, TreeError> {
        let hashes = (0..text.len() / 64)
            .map(|i| {
                let mut h = [0u8; 32];
                hex::decode_to_slice(&text[i * 64..(i + 1) * 64], &mut h).map(|()| h)
            })
            .collect::<Result<Vec<Hash>, _>>()
            .map_err(|_| TreeError::BadFrontier {
                size,
                expected: size.count_ones(),
                found: 0,
            })?;
        if !text.len().is_multiple_of(64) {
            return Err(TreeError::BadFrontier {
                size,
                expected: size.count_ones(),
                found: hashes.len(),
            });
        }
        Frontier::from_parts(size, hashes)
    }

    pub fn to_stored(&self) -> String {
        self.hashes.iter().map(hex::encode).collect()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf; `stored` receives the leaf and every subtree it completes.
    pub fn push(&mut self, leaf: Hash, stored: &mut Vec<(NodeId, Hash)>) {
        let mut index = self.size;
        let mut level = 0;
        let mut hash = leaf;
        stored.push((NodeId { level, index }, hash));
        while index & 1 == 1 {
            let left = self.hashes.pop().expect("a set bit has its subtree");
            hash = node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            stored.push((NodeId { level, index }, hash));
        }
        self.hashes.push(hash);
        self.size += 1;
    }

    /// The tree's root (the empty tree's for size 0).
    pub fn root(&self) -> Hash {
        let mut hashes = self.hashes.iter().rev();
        let Some(last) = hashes.next() else {
            return empty_root();
        };
        hashes.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// The largest power of two below `n` (n > 1).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// Where proofs get node hashes from: first a pass that only records which nodes it asks for,
/// then a pass over the nodes fetched.
trait Nodes {
    fn node(&mut self, id: NodeId) -> Hash;
}

struct Recorder(BTreeSet<NodeId>);

impl Nodes for Recorder {
    fn node(&mut self, id: NodeId) -> Hash {
        self.0.insert(id);
        [0; 32]
    }
}

struct Fetched<'a> {
    nodes: &'a HashMap<NodeId, Hash>,
    missing: Option<NodeId>,
}

impl Nodes for Fetched<'_> {
    fn node(&mut self, id: NodeId) -> Hash {
        match self.nodes.get(&id) {
            Some(h) => *h,
            None => {
                self.missing.get_or_insert(id);
                [0; 32]
            }
        }
    }
}

/// MTH of leaves `[start, end)`: a stored node when complete, else split as RFC 6962 does.
fn range_hash(nodes: &mut dyn Nodes, start: u64, end: u64) -> Hash {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return nodes.node(NodeId {
            level: n.trailing_zeros(),
            index: start / n,
        });
    }
    let k = split(n);
    let left = range_hash(nodes, start, start + k);
    let right = range_hash(nodes, start + k, end);
    node_hash(&left, &right)
}

/// RFC 6962 2.1.1 `PATH(m, D[start:end])`.
fn path(nodes: &mut dyn Nodes, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(nodes, m, start, start + k, out);
        out.push(range_hash(nodes, start + k, end));
    } else {
        path(nodes, m - k, start + k, end, out);
        out.push(range_hash(nodes, start, start + k));
    }
}

/// RFC 6962 2.1.2 `SUBPROOF(m, D[start:end], b)`.
fn subproof(nodes: &mut dyn Nodes, m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Hash>) {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(range_hash(nodes, start, end));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(nodes, m, start, start + k, whole, out);
        out.push(range_hash(nodes, start + k, end));
    } else {
        subproof(nodes, m - k, start + k, end, false, out);
        out.push(range_hash(nodes, start, start + k));
    }
}

/// What a proof or root needs, as a plan run twice: [`Plan::needed`] lists the stored nodes
/// to fetch (`O(log n)` of them), [`Plan::run`] computes the answer from them.
pub struct Plan {
    kind: PlanKind,
}

enum PlanKind {
    Root { size: u64 },
    Inclusion { leaf: u64, size: u64 },
    Consistency { from: u64, to: u64 },
}

impl Plan {
    pub fn root(size: u64) -> Plan {
        Plan {
            kind: PlanKind::Root { size },
        }
    }

    pub fn inclusion(leaf: u64, size: u64) -> Result<Plan, TreeError> {
        if leaf >= size {
            return Err(TreeError::OutOfRange(format!(
                "leaf {leaf} is not in a tree of size {size}"
            )));
        }
        Ok(Plan {
            kind: PlanKind::Inclusion { leaf, size },
        })
    }

    pub fn consistency(from: u64, to: u64) -> Result<Plan, TreeError> {
        if from > to {
            return Err(TreeError::OutOfRange(format!(
                "from ({from}) is larger than to ({to})"
            )));
        }
        Ok(Plan {
            kind: PlanKind::Consistency { from, to },
        })
    }

    fn compute(&self, nodes: &mut dyn Nodes) -> Vec<Hash> {
        let mut out = Vec::new();
        match self.kind {
            PlanKind::Root { size: 0 } => out.push(empty_root()),
            PlanKind::Root { size } => out.push(range_hash(nodes, 0, size)),
            PlanKind::Inclusion { leaf, size } => path(nodes, leaf, 0, size, &mut out),
            PlanKind::Consistency { from, to } if from == 0 || from == to => {}
            PlanKind::Consistency { from, to } => subproof(nodes, from, 0, to, true, &mut out),
        }
        out
    }

    /// The stored nodes the answer is made of.
    pub fn needed(&self) -> Vec<NodeId> {
        let mut recorder = Recorder(BTreeSet::new());
        self.compute(&mut recorder);
        recorder.0.into_iter().collect()
    }

    /// The nodes the answer needs that are stored, and the blocks whose leaves give the rest
    /// (see [`block_nodes`]), in order.
    pub fn needed_split(&self) -> (Vec<NodeId>, Vec<u64>) {
        let (stored, below): (Vec<NodeId>, Vec<NodeId>) =
            self.needed().into_iter().partition(|id| is_stored(*id));
        let mut blocks: Vec<u64> = below.into_iter().map(block_of).collect();
        blocks.sort_unstable();
        blocks.dedup();
        (stored, blocks)
    }

    /// The answer (a root: one hash; a proof: its hashes in order) from the fetched nodes.
    pub fn run(&self, nodes: &HashMap<NodeId, Hash>) -> Result<Vec<Hash>, TreeError> {
        let mut fetched = Fetched {
            nodes,
            missing: None,
        };
        let out = self.compute(&mut fetched);
        match fetched.missing {
            Some(NodeId { level, index }) => Err(TreeError::MissingNode { level, index }),
            None => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskledger_events::merkle::{leaf_hash, verify_consistency, verify_inclusion};

    /// The published RFC 6962 test leaves (see `taskledger_events::merkle`'s tests).
    fn leaves() -> Vec<Hash> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|d| leaf_hash(&hex::decode(d).unwrap()))
        .collect()
    }

    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// A tree built by appending `leaves` one at a time: every node stored, and the frontier.
    fn build(leaves: &[Hash]) -> (HashMap<NodeId, Hash>, Frontier) {
        let mut frontier = Frontier::empty();
        let mut stored = Vec::new();
        for leaf in leaves {
            frontier.push(*leaf, &mut stored);
        }
        (stored.into_iter().collect(), frontier)
    }

    fn answer(plan: Plan, nodes: &HashMap<NodeId, Hash>) -> Vec<Hash> {
        plan.run(nodes).unwrap()
    }

    #[test]
    fn appending_the_published_leaves_gives_the_published_roots_at_every_size() {
        let leaves = leaves();
        for size in 1..=8 {
            let (nodes, frontier) = build(&leaves[..size]);
            assert_eq!(hex::encode(frontier.root()), ROOTS[size - 1], "size {size}");
            let (all, _) = build(&leaves);
            let root = answer(Plan::root(size as u64), &all)[0];
            assert_eq!(hex::encode(root), ROOTS[size - 1], "historical size {size}");
            assert_eq!(answer(Plan::root(size as u64), &nodes)[0], frontier.root());
        }
    }

    #[test]
    fn the_published_proofs_are_the_ones_built() {
        let (nodes, _) = build(&leaves());
        let hexes = |v: Vec<Hash>| v.iter().map(hex::encode).collect::<Vec<_>>();
        assert_eq!(
            hexes(answer(Plan::inclusion(5, 8).unwrap(), &nodes)),
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
        assert_eq!(
            hexes(answer(Plan::consistency(6, 7).unwrap(), &nodes)),
            [
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
        assert_eq!(
            hexes(answer(Plan::consistency(2, 5).unwrap(), &nodes)),
            [
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ]
        );
    }

    #[test]
    fn every_proof_of_a_grown_tree_verifies_with_the_independent_verifier() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let (nodes, _) = build(&leaves);
        let root = |n: u64| answer(Plan::root(n), &nodes)[0];
        for size in 1..=70u64 {
            for leaf in 0..size {
                let proof = answer(Plan::inclusion(leaf, size).unwrap(), &nodes);
                verify_inclusion(leaf, size, &leaves[leaf as usize], &proof, &root(size))
                    .unwrap_or_else(|e| panic!("leaf {leaf} of {size}: {e}"));
            }
            for from in 0..=size {
                let proof = answer(Plan::consistency(from, size).unwrap(), &nodes);
                verify_consistency(from, size, &proof, &root(from), &root(size))
                    .unwrap_or_else(|e| panic!("{from} to {size}: {e}"));
            }
        }
    }

    /// What the store keeps: the nodes of [`STORED_FROM_LEVEL`] and up.
    fn build_stored(leaves: &[Hash]) -> HashMap<NodeId, Hash> {
        build(leaves)
            .0
            .into_iter()
            .filter(|(id, _)| is_stored(*id))
            .collect()
    }

    /// The nodes a plan needs, from the stored ones and the leaves of the blocks it names.
    fn fetch(
        plan: &Plan,
        stored: &HashMap<NodeId, Hash>,
        leaves: &[Hash],
    ) -> HashMap<NodeId, Hash> {
        let (ids, blocks) = plan.needed_split();
        let mut nodes: HashMap<NodeId, Hash> = ids
            .iter()
            .filter_map(|id| stored.get(id).map(|h| (*id, *h)))
            .collect();
        for block in blocks {
            let start = (block * BLOCK_LEAVES) as usize;
            let end = (start + BLOCK_LEAVES as usize).min(leaves.len());
            nodes.extend(block_nodes(block, &leaves[start..end]));
        }
        nodes
    }

    #[test]
    fn proofs_from_the_stored_levels_and_recomputed_blocks_are_the_full_trees_proofs() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let (all, _) = build(&leaves);
        let stored = build_stored(&leaves);
        assert!(stored.len() < leaves.len() / 4, "{}", stored.len());
        let check = |plan: Plan| {
            let (_, blocks) = plan.needed_split();
            assert!(blocks.len() <= 2, "{blocks:?}");
            let nodes = fetch(&plan, &stored, &leaves);
            assert_eq!(answer(plan_clone(&plan), &nodes), answer(plan, &all));
        };
        for size in 1..=70u64 {
            check(Plan::root(size));
            for leaf in 0..size {
                check(Plan::inclusion(leaf, size).unwrap());
            }
            for from in 0..=size {
                check(Plan::consistency(from, size).unwrap());
            }
        }
    }

    fn plan_clone(plan: &Plan) -> Plan {
        match plan.kind {
            PlanKind::Root { size } => Plan::root(size),
            PlanKind::Inclusion { leaf, size } => Plan::inclusion(leaf, size).unwrap(),
            PlanKind::Consistency { from, to } => Plan::consistency(from, to).unwrap(),
        }
    }

    #[test]
    fn a_block_not_yet_complete_gives_only_its_complete_subtrees() {
        let leaves: Vec<Hash> = (0u32..21).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let (all, _) = build(&leaves);
        let partial = block_nodes(1, &leaves[16..21]);
        // Leaves 16..21: five leaves, two pairs and one quadruple.
        assert_eq!(partial.len(), 5 + 2 + 1);
        for (id, hash) in partial {
            assert_eq!(all[&id], hash, "{id:?}");
        }
    }

    #[test]
    fn a_proof_needs_a_logarithmic_number_of_stored_nodes() {
        let size = (1u64 << 40) - 12345;
        let inclusion = Plan::inclusion(size / 3, size).unwrap().needed();
        let consistency = Plan::consistency(size / 2 + 7, size).unwrap().needed();
        let root = Plan::root(size).needed();
        assert!(inclusion.len() <= 2 * 40, "{}", inclusion.len());
        assert!(consistency.len() <= 2 * 40, "{}", consistency.len());
        assert!(root.len() <= 40, "{}", root.len());
    }

    #[test]
    fn a_frontier_round_trips_through_its_stored_text() {
        let (_, frontier) = build(&leaves()[..7]);
        let back = Frontier::from_stored(7, &frontier.to_stored()).unwrap();
        assert_eq!(back, frontier);
        assert!(Frontier::from_stored(8, &frontier.to_stored()).is_err());
    }
}
