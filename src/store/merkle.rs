//! Each account's Merkle tree, kept by the append transaction and read for digests and proofs.
//! The tree's shape and proofs are [`crate::audit::tree`]'s; this module stores and fetches.

use std::collections::HashMap;

use sqlx::AnyConnection;
use taskledger_events::merkle::{event_leaf_hash, Hash};

use super::sql::Statement;
use super::{Store, StoreError};
use crate::audit::tree::{
    block_nodes, is_stored, Frontier, NodeId, Plan, TreeError, BLOCK_LEAVES, STORED_FROM_LEVEL,
};

/// Nodes per INSERT: 5 parameters each.
const NODES_PER_INSERT: usize = 1000;
/// Events read per page when a tree is rebuilt or recomputed.
const PAGE: i64 = 5000;
/// Blocks read per round when an event's leaf is searched for.
const SEARCH_PROBES: u64 = 32;

/// One appended event, as its account's tree sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Leaf<'a> {
    pub account_id: &'a str,
    pub global_position: i64,
    /// The event's hex hash.
    pub hash: &'a str,
}

/// An account's tree as of its last append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    pub account_id: String,
    pub tree_size: u64,
    pub last_global_position: i64,
    pub root: Hash,
}

struct NewNode<'a> {
    account_id: &'a str,
    id: NodeId,
    hash: Hash,
    /// The global position of the node's last leaf: blocks are searched by it.
    global_position: i64,
}

fn corrupt_tree(account_id: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::CorruptTree {
        account_id: account_id.to_string(),
        message: e.to_string(),
    }
}

fn leaf_of(account_id: &str, hash: &str) -> Result<Hash, StoreError> {
    event_leaf_hash(hash).map_err(|e| corrupt_tree(account_id, e))
}

/// Appends one event's leaf to `frontier`, adding to `nodes` the stored subtrees it completes
/// (`scratch` takes every subtree it completes, stored or not).
fn push_leaf<'a>(
    frontier: &mut Frontier,
    account_id: &'a str,
    position: i64,
    hash: &str,
    scratch: &mut Vec<(NodeId, Hash)>,
    nodes: &mut Vec<NewNode<'a>>,
) -> Result<(), StoreError> {
    scratch.clear();
    frontier.push(leaf_of(account_id, hash)?, scratch);
    nodes.extend(
        scratch
            .iter()
            .filter(|(id, _)| is_stored(*id))
            .map(|(id, hash)| NewNode {
                account_id,
                id: *id,
                hash: *hash,
                global_position: position,
            }),
    );
    Ok(())
}

/// Where a block's leaves start: after the last leaf of the stored node before it, which
/// `fetched` must hold.
fn block_start(
    account_id: &str,
    fetched: &HashMap<NodeId, (Hash, i64)>,
    block: u64,
) -> Result<i64, StoreError> {
    if block == 0 {
        return Ok(0);
    }
    let id = NodeId {
        level: STORED_FROM_LEVEL,
        index: block - 1,
    };
    fetched.get(&id).map(|(_, last)| *last).ok_or_else(|| {
        corrupt_tree(
            account_id,
            TreeError::MissingNode {
                level: id.level,
                index: id.index,
            },
        )
    })
}

/// The account's tree head as stored, over its events before global position `before`: the
/// stored nodes of its complete blocks (the last block's node says where its leaves end),
/// then the events after them, folded in. There is no head row to keep on every append: the
/// leaves below the stored level are the events themselves.
///
/// A stored block beyond the account's events (left by events removed behind the ledger's
/// back) is not taken: the tree is the events'. More than a block of events after the last
/// stored block (a tree that fell behind) are folded all the same, and with `write` their
/// complete blocks are stored, so that the tree catches up.
async fn stored_head(
    conn: &mut AnyConnection,
    account_id: &str,
    before: i64,
    write: bool,
) -> Result<Head, StoreError> {
    let last: Option<(i64, Option<i64>)> = sqlx::query_as(
        "SELECT idx, global_position FROM merkle_nodes WHERE account_id = $1 AND level = $2 \
         AND global_position <= (SELECT MAX(global_position) FROM events \
         WHERE account_id = $1 AND global_position < $3) \
         ORDER BY idx DESC LIMIT 1",
    )
    .bind(account_id)
    .bind(i64::from(STORED_FROM_LEVEL))
    .bind(before)
    .fetch_optional(&mut *conn)
    .await?;
    let (blocks, mut after) = match last {
        Some((idx, position)) => (idx as u64 + 1, position.unwrap_or(0)),
        None => (0, 0),
    };
    let size = blocks * BLOCK_LEAVES;
    // The complete subtrees that make up the first `size` leaves, largest first: all stored.
    let mut edge = Vec::new();
    let mut start = 0u64;
    for level in (STORED_FROM_LEVEL..64).rev() {
        if size & (1 << level) != 0 {
            edge.push(NodeId {
                level,
                index: start >> level,
            });
            start += 1 << level;
        }
    }
    let found = nodes_by_id(conn, account_id, &edge).await?;
    let hashes = edge
        .iter()
        .map(|id| {
            found.get(id).map(|(hash, _)| *hash).ok_or_else(|| {
                corrupt_tree(
                    account_id,
                    TreeError::MissingNode {
                        level: id.level,
                        index: id.index,
                    },
                )
            })
        })
        .collect::<Result<Vec<Hash>, StoreError>>()?;
    let mut frontier =
        Frontier::from_parts(size, hashes).map_err(|e| corrupt_tree(account_id, e))?;
    while fold_page(
        conn,
        account_id,
        &mut frontier,
        &mut after,
        before - 1,
        write,
    )
    .await?
        == PAGE as u64
    {}
    if !write && frontier.size() - size >= BLOCK_LEAVES {
        tracing::warn!(
            account_id,
            "the account's stored tree is behind its events; `taskledger replay` rebuilds it \
             (its next append catches it up)"
        );
    }
    Ok((frontier, after))
}

/// The stored nodes among `ids`, with the global position of each one's last leaf.
async fn nodes_by_id(
    conn: &mut AnyConnection,
    account_id: &str,
    ids: &[NodeId],
) -> Result<HashMap<NodeId, (Hash, i64)>, StoreError> {
    let mut nodes = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(200) {
        let mut sql = String::from(
            "SELECT level, idx, hash, global_position FROM merkle_nodes \
             WHERE account_id = $1 AND (",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str(&format!(
                "(level = ${} AND idx = ${})",
                2 + 2 * i,
                3 + 2 * i
            ));
        }
        sql.push(')');
        let rows: Vec<(i64, i64, Vec<u8>, Option<i64>)> = chunk
            .iter()
            .fold(sqlx::query_as(&sql).bind(account_id), |q, id| {
                q.bind(i64::from(id.level)).bind(id.index as i64)
            })
            .fetch_all(&mut *conn)
            .await?;
        for (level, idx, hash, position) in rows {
            let hash: Hash = hash
                .try_into()
                .map_err(|_| corrupt_tree(account_id, "a node is not 32 bytes"))?;
            nodes.insert(
                NodeId {
                    level: level as u32,
                    index: idx as u64,
                },
                (hash, position.unwrap_or(0)),
            );
        }
    }
    Ok(nodes)
}

/// Writes new nodes, over any stored at their place: a node is a function of the events
/// below it, so this writes the same value again, except over the leftovers of a ledger whose
/// events were removed behind its back, which `verify --digest` reports and the tree then
/// outgrows.
async fn write_nodes(conn: &mut AnyConnection, nodes: &[NewNode<'_>]) -> Result<(), StoreError> {
    for chunk in nodes.chunks(NODES_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO merkle_nodes (account_id, level, idx, hash, global_position) VALUES ",
        );
        for r in 0..chunk.len() {
            let b = r * 5;
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5
            ));
        }
        sql.push_str(
            " ON CONFLICT (account_id, level, idx) DO UPDATE SET hash = excluded.hash, \
             global_position = excluded.global_position",
        );
        chunk
            .iter()
            .fold(sqlx::query(&sql), |q, n| {
                q.bind(n.account_id)
                    .bind(i64::from(n.id.level))
                    .bind(n.id.index as i64)
                    .bind(n.hash.to_vec())
                    .bind(n.global_position)
            })
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// An account's frontier and the global position of its last leaf.
pub(super) type Head = (Frontier, i64);

/// Accounts whose frontier a process keeps in memory at most. An entry is an account id and
/// `O(log n)` hashes (under a kilobyte for a billion leaves); an account left out is read
/// back on its next append.
const REMEMBERED_ACCOUNTS: usize = 10_000;
/// Values one guarded statement binds at most (PostgreSQL takes 65,535); a larger append
/// reads the heads and writes in separate statements.
const GUARDED_VALUES: usize = 30_000;

/// The tree heads this process last grew, per account, so that an append need not work them
/// out from the stored nodes and events. What is remembered is only a guess: the statement
/// that grows a tree from it checks, under the ledger head lock, that the account's last
/// event before the new ones is still the head's last leaf (another process may have
/// appended, or a transaction been rolled back), and writes nothing if not.
#[derive(Debug, Default)]
pub struct KnownFrontiers {
    heads: HashMap<String, Head>,
    /// How many appends read their trees' heads (not known, or known wrong).
    reads: u64,
}

impl KnownFrontiers {
    pub(super) fn get(&self, account_id: &str) -> Option<&Head> {
        self.heads.get(account_id)
    }

    pub(super) fn remember(&mut self, account_id: String, head: Head) {
        if !self.heads.contains_key(&account_id) && self.heads.len() >= REMEMBERED_ACCOUNTS {
            // Any one goes: the bound matters, which one does not.
            if let Some(some) = self.heads.keys().next().cloned() {
                self.heads.remove(&some);
            }
        }
        self.heads.insert(account_id, head);
    }

    pub(super) fn forget(&mut self, account_id: &str) {
        self.heads.remove(account_id);
    }

    pub(super) fn read_back(&mut self) {
        self.reads += 1;
    }
}

/// What appending leaves does to their accounts' trees, worked out in memory from the heads
/// the trees are expected to have.
pub(super) struct Growth<'a> {
    accounts: Vec<GrownAccount<'a>>,
    nodes: Vec<NewNode<'a>>,
    /// Where each account's tree is expected to end, and the new nodes, as the guarded
    /// statement binds them (JSON arrays of rows).
    json: [String; 2],
}

struct GrownAccount<'a> {
    account_id: &'a str,
    /// The global position of the head's last leaf before the growth (0: no leaf).
    last_before: i64,
    /// The global position of the first leaf grown.
    first_grown: i64,
    after: Head,
}

impl<'a> Growth<'a> {
    /// The growth from the heads `known` gives, `None` if it does not know every account's.
    pub(super) fn from_known(
        leaves: &[Leaf<'a>],
        known: impl Fn(&str) -> Option<Head>,
    ) -> Result<Option<Growth<'a>>, StoreError> {
        let mut starts = HashMap::new();
        for leaf in leaves {
            if !starts.contains_key(leaf.account_id) {
                let Some(head) = known(leaf.account_id) else {
                    return Ok(None);
                };
                starts.insert(leaf.account_id, head);
            }
        }
        Growth::from(leaves, starts).map(Some)
    }

    /// The growth from `starts`, which holds every account's head (in any order).
    fn from(
        leaves: &[Leaf<'a>],
        mut starts: HashMap<&'a str, Head>,
    ) -> Result<Growth<'a>, StoreError> {
        let mut accounts: Vec<GrownAccount> = Vec::new();
        let mut nodes: Vec<NewNode> = Vec::with_capacity(leaves.len() / 8 + 1);
        let mut scratch: Vec<(NodeId, Hash)> = Vec::new();
        for leaf in leaves {
            let i = match accounts
                .iter()
                .position(|a| a.account_id == leaf.account_id)
            {
                Some(i) => i,
                None => {
                    let head = starts
                        .remove(leaf.account_id)
                        .unwrap_or_else(|| (Frontier::empty(), 0));
                    accounts.push(GrownAccount {
                        account_id: leaf.account_id,
                        last_before: head.1,
                        first_grown: leaf.global_position,
                        after: head,
                    });
                    accounts.len() - 1
                }
            };
            let (frontier, last) = &mut accounts[i].after;
            push_leaf(
                frontier,
                leaf.account_id,
                leaf.global_position,
                leaf.hash,
                &mut scratch,
                &mut nodes,
            )?;
            *last = leaf.global_position;
        }
        // Only what the guarded statement binds is written out (see `push_guarded`): the
        // accounts when there are several, the nodes when there are any.
        let before: Vec<serde_json::Value> = match accounts.len() {
            1 => Vec::new(),
            _ => accounts
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "account_id": a.account_id,
                        "first": a.first_grown,
                        "last": a.last_before,
                    })
                })
                .collect(),
        };
        let new_nodes: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "a": n.account_id,
                    "l": n.id.level,
                    "i": n.id.index,
                    "h": hex::encode(n.hash),
                    "g": n.global_position,
                })
            })
            .collect();
        let json = [before, new_nodes].map(|rows| serde_json::Value::from(rows).to_string());
        Ok(Growth {
            accounts,
            nodes,
            json,
        })
    }

    /// Whether [`Growth::push_guarded`] stays within a statement's bound values.
    pub(super) fn fits_one_statement(&self, already_bound: usize) -> bool {
        already_bound + 4 <= GUARDED_VALUES
    }

    /// The accounts' heads once grown.
    pub(super) fn into_heads(self) -> impl Iterator<Item = (String, Head)> + 'a {
        self.accounts
            .into_iter()
            .map(|a| (a.account_id.to_string(), a.after))
    }

    /// PostgreSQL common table expressions, to follow `WITH ` or a comma: `mk` (one row, `ok`:
    /// whether every account's last event before the grown ones is the last leaf of the head
    /// this growth starts from, an account with no such event counting as the empty tree),
    /// then the new nodes if there are any, written only if `ok`. Appends hold the ledger
    /// head lock, so nothing appends between the check and the writes; the check reads the
    /// events before the first grown one, so the statement may insert those events too, or
    /// follow the one that did. The rows travel as JSON values, so the text is the same for
    /// every growth of a shape and PostgreSQL prepares and plans it once per connection.
    pub(super) fn push_guarded(&'a self, s: &mut Statement<'a>) {
        if let [one] = &self.accounts[..] {
            // The common case, one account, without a JSON value to take apart.
            s.push(
                "mk AS (SELECT COALESCE((SELECT MAX(x.global_position) FROM events x \
                 WHERE x.account_id = ",
            );
            s.text(Some(one.account_id));
            s.push(" AND x.global_position < ");
            s.int(Some(one.first_grown));
            s.push("), 0) = ");
            s.int(Some(one.last_before));
            s.push(" AS ok)");
        } else {
            s.push("mk AS (SELECT COUNT(*) = ");
            s.int(Some(self.accounts.len() as i64));
            s.push(" AS ok FROM json_to_recordset(");
            s.text(Some(&self.json[0]));
            s.push(
                "::json) AS v (account_id text, first bigint, last bigint) \
                 WHERE COALESCE((SELECT MAX(x.global_position) FROM events x \
                 WHERE x.account_id = v.account_id AND x.global_position < v.first), 0) \
                 = v.last)",
            );
        }
        if self.nodes.is_empty() {
            // Most appends complete no block of 16 leaves: nothing to write.
            return;
        }
        s.push(
            ", mn AS (INSERT INTO merkle_nodes (account_id, level, idx, hash, global_position) \
             SELECT a, l, i, decode(h, 'hex'), g FROM json_to_recordset(",
        );
        s.text(Some(&self.json[1]));
        s.push(
            "::json) AS v (a text, l bigint, i bigint, h text, g bigint) \
             WHERE (SELECT ok FROM mk) ON CONFLICT (account_id, level, idx) DO UPDATE \
             SET hash = excluded.hash, global_position = excluded.global_position)",
        );
    }
}

/// Adds appended events (in global order, any accounts) to their accounts' trees as
/// stored, inside the append transaction: each account's head worked out from its stored
/// nodes and the events before its first new one (see [`stored_head`]), then the new stored
/// nodes (an eighth of one per event) in one statement. The accounts' heads once grown.
pub(super) async fn append_leaves(
    conn: &mut AnyConnection,
    leaves: &[Leaf<'_>],
) -> Result<Vec<(String, Head)>, StoreError> {
    let mut starts: HashMap<&str, Head> = HashMap::new();
    for leaf in leaves {
        if !starts.contains_key(leaf.account_id) {
            let head = stored_head(conn, leaf.account_id, leaf.global_position, true).await?;
            starts.insert(leaf.account_id, head);
        }
    }
    let growth = Growth::from(leaves, starts)?;
    write_nodes(conn, &growth.nodes).await?;
    Ok(growth.into_heads().collect())
}

/// Grows the trees by `leaves` with one guarded statement (see [`Growth::push_guarded`]) if
/// `known` has every account's head; `None` if it has not, or they were not the stored ones
/// and nothing was written.
pub(super) async fn append_known_leaves(
    conn: &mut AnyConnection,
    leaves: &[Leaf<'_>],
    known: impl Fn(&str) -> Option<Head>,
) -> Result<Option<Vec<(String, Head)>>, StoreError> {
    let Some(growth) = Growth::from_known(leaves, known)? else {
        return Ok(None);
    };
    if !growth.fits_one_statement(0) {
        return Ok(None);
    }
    let mut s = Statement::default();
    s.push("WITH ");
    growth.push_guarded(&mut s);
    s.push(" SELECT ok FROM mk");
    let ok: bool = sqlx::Row::try_get(&s.query().fetch_one(&mut *conn).await?, 0)?;
    Ok(ok.then(|| growth.into_heads().collect()))
}

impl Store {
    /// How many appends through this store (and its clones) read their trees' heads from
    /// the database instead of growing them from the heads this process wrote last.
    pub fn tree_heads_read(&self) -> u64 {
        self.frontiers.lock().expect("the frontiers lock").reads
    }

    /// The account's tree as of its last append (an empty tree if it has no events): its
    /// stored nodes and the events of its last block, three reads of a few rows.
    pub async fn tree_head(&self, account_id: &str) -> Result<TreeHead, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let (frontier, last) = stored_head(&mut conn, account_id, i64::MAX, false).await?;
        Ok(TreeHead {
            account_id: account_id.to_string(),
            tree_size: frontier.size(),
            last_global_position: last,
            root: frontier.root(),
        })
    }

    /// Runs a root or proof plan over the account's tree: one read of the `O(log n)` stored
    /// nodes it needs (with the nodes that say where its blocks start), then one read of each
    /// block's leaves (at most two blocks of [`BLOCK_LEAVES`] events).
    pub async fn tree_answer(
        &self,
        account_id: &str,
        plan: &Plan,
    ) -> Result<Vec<Hash>, StoreError> {
        let (mut wanted, blocks) = plan.needed_split();
        // A block starts after the last leaf of the stored node before it.
        wanted.extend(blocks.iter().filter(|b| **b > 0).map(|b| NodeId {
            level: STORED_FROM_LEVEL,
            index: b - 1,
        }));
        wanted.sort_unstable();
        wanted.dedup();
        let fetched = self.stored_nodes(account_id, &wanted).await?;
        let mut nodes: HashMap<NodeId, Hash> =
            fetched.iter().map(|(id, (hash, _))| (*id, *hash)).collect();
        for block in blocks {
            let after = block_start(account_id, &fetched, block)?;
            let leaves = self.block_leaves(account_id, after).await?;
            nodes.extend(block_nodes(block, &leaves));
        }
        plan.run(&nodes)
            .map_err(|e: TreeError| corrupt_tree(account_id, e))
    }

    /// The stored nodes among `ids`, with the global position of each one's last leaf.
    async fn stored_nodes(
        &self,
        account_id: &str,
        ids: &[NodeId],
    ) -> Result<HashMap<NodeId, (Hash, i64)>, StoreError> {
        nodes_by_id(&mut *self.pool.acquire().await?, account_id, ids).await
    }

    /// The leaves of the block that starts after global position `after`: the hashes of the
    /// account's next [`BLOCK_LEAVES`] events (fewer for the block not yet complete).
    async fn block_leaves(&self, account_id: &str, after: i64) -> Result<Vec<Hash>, StoreError> {
        self.block_events(account_id, after)
            .await?
            .iter()
            .map(|(_, hash)| leaf_of(account_id, hash))
            .collect()
    }

    /// The global positions and hashes of the events of the block that starts after global
    /// position `after`.
    async fn block_events(
        &self,
        account_id: &str,
        after: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT global_position, hash FROM events WHERE account_id = $1 \
             AND global_position > $2 ORDER BY global_position LIMIT $3",
        )
        .bind(account_id)
        .bind(after)
        .bind(BLOCK_LEAVES as i64)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The leaf index and global position of one of the account's events, if it is in the
    /// account's tree. Leaves are in global order, and each stored node of the lowest stored
    /// level knows the position of its block's last leaf, so the event's block is found by
    /// searching those: each round reads [`SEARCH_PROBES`] of them by primary key and narrows
    /// the range that many times (six rounds for a billion leaves), then one read of the
    /// block's events places it.
    pub async fn leaf_of_event(
        &self,
        account_id: &str,
        event_id: &str,
    ) -> Result<Option<(u64, i64)>, StoreError> {
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT global_position FROM events WHERE event_id = $1 AND account_id = $2",
        )
        .bind(event_id)
        .bind(account_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(position) = position else {
            return Ok(None);
        };
        let size = self.tree_head(account_id).await?.tree_size;
        // The event's block is the first complete one whose last leaf is at or after it, or
        // the block not yet complete: it is in [lo, hi], where hi = blocks is that last one.
        let blocks = size / BLOCK_LEAVES;
        let (mut lo, mut hi) = (0u64, blocks);
        while lo < hi {
            let step = (hi - lo).div_ceil(SEARCH_PROBES).max(1);
            let probes: Vec<u64> = (lo..hi).step_by(step as usize).collect();
            let ids: Vec<NodeId> = probes
                .iter()
                .map(|index| NodeId {
                    level: STORED_FROM_LEVEL,
                    index: *index,
                })
                .collect();
            let found = self.stored_nodes(account_id, &ids).await?;
            let mut next = (probes[probes.len() - 1] + 1, hi);
            for (i, id) in ids.iter().enumerate() {
                let (_, last) = found.get(id).ok_or_else(|| {
                    corrupt_tree(account_id, "a stored node below the tree's size is missing")
                })?;
                if *last >= position {
                    next = (if i == 0 { lo } else { probes[i - 1] + 1 }, probes[i]);
                    break;
                }
            }
            (lo, hi) = next;
        }
        let block = lo;
        let mut before = 0;
        if block > 0 {
            let id = NodeId {
                level: STORED_FROM_LEVEL,
                index: block - 1,
            };
            let found = self.stored_nodes(account_id, &[id]).await?;
            before = found
                .get(&id)
                .ok_or_else(|| corrupt_tree(account_id, "a stored node is missing"))?
                .1;
        }
        let block_events = self.block_events(account_id, before).await?;
        Ok(block_events
            .iter()
            .position(|(p, _)| *p == position)
            .map(|offset| block * BLOCK_LEAVES + offset as u64)
            .filter(|leaf| *leaf < size)
            .map(|leaf| (leaf, position)))
    }

    /// The accounts with events at global positions in `(after, until]`: one range read of
    /// the events' primary key, so its cost is that of the events in the range.
    pub async fn accounts_with_events_between(
        &self,
        after: i64,
        until: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT account_id FROM events WHERE global_position > $1 \
             AND global_position <= $2",
        )
        .bind(after)
        .bind(until)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Stores the complete blocks of the account's tree that its events have outgrown (a
    /// store [`Store::without_merkle_trees`] appended them), under the ledger head lock, as
    /// the account's next append would; the tree's size.
    pub async fn catch_up_tree(&self, account_id: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin_append().await?;
        let (frontier, _) = stored_head(tx.conn(), account_id, i64::MAX, true).await?;
        tx.commit().await?;
        self.frontiers
            .lock()
            .expect("the frontiers lock")
            .forget(account_id);
        Ok(frontier.size())
    }

    /// Builds the trees of a ledger that had events before trees existed, once.
    pub async fn ensure_trees(&self) -> Result<(), StoreError> {
        let complete: i64 = sqlx::query_scalar("SELECT complete FROM merkle_state WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        if complete == 1 {
            return Ok(());
        }
        tracing::info!("building the accounts' Merkle trees over the existing events (once)");
        self.rebuild_trees(|_| {}).await?;
        sqlx::query("UPDATE merkle_state SET complete = 1 WHERE id = 1")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Rebuilds every account's tree from its events (`replay`). Each account's events are
    /// streamed a page at a time while writers run; only the few events appended meanwhile
    /// are folded in under the ledger head lock, where the nodes beyond the tree are removed.
    pub async fn rebuild_trees(&self, progress: impl Fn(u64)) -> Result<u64, StoreError> {
        let accounts: Vec<String> =
            sqlx::query_scalar("SELECT account_id FROM accounts ORDER BY account_id")
                .fetch_all(&self.pool)
                .await?;
        let mut leaves = 0;
        for account in accounts {
            // Each account has two ledgers, each with its tree: its own and its test ledger.
            for ledger in [false, true].map(|test| taskledger_events::ledger_of(&account, test)) {
                leaves += self.rebuild_tree(&ledger, &progress).await?;
            }
        }
        Ok(leaves)
    }

    async fn rebuild_tree(
        &self,
        account_id: &str,
        progress: &impl Fn(u64),
    ) -> Result<u64, StoreError> {
        let snapshot = self.head_position().await?;
        let mut frontier = Frontier::empty();
        let mut last = 0;
        let mut conn = self.pool.acquire().await?;
        let mut done = 0;
        loop {
            let page = fold_page(
                &mut conn,
                account_id,
                &mut frontier,
                &mut last,
                snapshot,
                true,
            )
            .await?;
            done += page;
            progress(page);
            if page == 0 {
                break;
            }
        }
        drop(conn);
        let mut tx = self.begin_append().await?;
        loop {
            let page = fold_page(
                tx.conn(),
                account_id,
                &mut frontier,
                &mut last,
                i64::MAX,
                true,
            )
            .await?;
            done += page;
            if page == 0 {
                break;
            }
        }
        // Nodes beyond the rebuilt tree (left by events removed behind the ledger's back, whose
        // positions new events may take again) would be read as the tree's: one range of
        // each level.
        for level in 0..64u32 {
            let first_beyond = (frontier.size() >> level) as i64;
            sqlx::query(
                "DELETE FROM merkle_nodes WHERE account_id = $1 AND level = $2 AND idx >= $3",
            )
            .bind(account_id)
            .bind(i64::from(level))
            .bind(first_beyond)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await?;
        // What this process remembered of the tree may be what the rebuild replaced.
        self.frontiers
            .lock()
            .expect("the frontiers lock")
            .forget(account_id);
        Ok(done)
    }
}

/// Folds the account's next page of events (after `last`, up to `until` included) into
/// `frontier`, writing the stored nodes it completes if `write`; the number of events folded.
async fn fold_page(
    conn: &mut AnyConnection,
    account_id: &str,
    frontier: &mut Frontier,
    last: &mut i64,
    until: i64,
    write: bool,
) -> Result<u64, StoreError> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT global_position, hash FROM events WHERE account_id = $1 \
         AND global_position > $2 AND global_position <= $3 ORDER BY global_position LIMIT $4",
    )
    .bind(account_id)
    .bind(*last)
    .bind(until)
    .bind(PAGE)
    .fetch_all(&mut *conn)
    .await?;
    let mut scratch = Vec::new();
    let mut nodes = Vec::with_capacity(rows.len() / 8 + 1);
    for (position, hash) in &rows {
        push_leaf(
            frontier,
            account_id,
            *position,
            hash,
            &mut scratch,
            &mut nodes,
        )?;
        *last = *position;
    }
    if write {
        write_nodes(conn, &nodes).await?;
    }
    Ok(rows.len() as u64)
}

/// What the account's events themselves say about its tree, recomputed from scratch: for
/// `verify --digest`, which must not trust the stored nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecomputedTree {
    pub events: u64,
    /// The root over the first `at` events, if the account has that many.
    pub root_at: Option<Hash>,
    pub root: Hash,
    /// The first event whose stored hash is not the hash of its content.
    pub first_bad_hash: Option<String>,
    /// The first stored subtree the events no longer give.
    pub first_changed_leaves: Option<ChangedLeaves>,
    /// The leaves of the tree of `at` leaves that no stored subtree covers (those after its
    /// last complete block), if any: a change the stored blocks do not place is among them.
    pub unstored_at: Option<ChangedLeaves>,
}

/// Leaves of which at least one differs from what was appended. Only subtrees of
/// [`STORED_FROM_LEVEL`] and up are kept, so a change is placed within a block of
/// [`BLOCK_LEAVES`] events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedLeaves {
    pub first_leaf: u64,
    /// The events at those leaves, in order.
    pub event_ids: Vec<String>,
}

impl Store {
    /// Streams the account's events in global order (constant memory) and recomputes its
    /// tree, the root at `at` leaves, and where the events no longer match what is stored.
    pub async fn recompute_tree(
        &self,
        account_id: &str,
        at: u64,
    ) -> Result<RecomputedTree, StoreError> {
        let mut frontier = Frontier::empty();
        let mut out = RecomputedTree {
            events: 0,
            root_at: (at == 0).then(taskledger_events::merkle::empty_root),
            root: taskledger_events::merkle::empty_root(),
            first_bad_hash: None,
            first_changed_leaves: None,
            unstored_at: None,
        };
        let mut after = 0;
        let sql = format!(
            "SELECT {} FROM events WHERE account_id = $1 AND global_position > $2 \
             ORDER BY global_position LIMIT $3",
            super::read::EVENT_COLUMNS
        );
        let mut scratch = Vec::new();
        // The events of the block being walked: a change is named by them.
        let mut block: Vec<String> = Vec::with_capacity(BLOCK_LEAVES as usize);
        loop {
            let rows: Vec<super::read::EventRow> = sqlx::query_as(&sql)
                .bind(account_id)
                .bind(after)
                .bind(PAGE)
                .fetch_all(&self.pool)
                .await?;
            if rows.is_empty() {
                break;
            }
            // The stored nodes of the blocks these events complete, one primary-key range read.
            let first = frontier.size() / BLOCK_LEAVES;
            let end = (frontier.size() + rows.len() as u64) / BLOCK_LEAVES;
            let stored: HashMap<i64, Vec<u8>> = sqlx::query_as(
                "SELECT idx, hash FROM merkle_nodes WHERE account_id = $1 AND level = $2 \
                 AND idx >= $3 AND idx < $4",
            )
            .bind(account_id)
            .bind(i64::from(STORED_FROM_LEVEL))
            .bind(first as i64)
            .bind(end as i64)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
            for e in &rows {
                after = e.global_position;
                let content_matches = e
                    .clone()
                    .envelope()
                    .ok()
                    .and_then(|env| env.expected_hash_of(&e.payload).ok())
                    .is_some_and(|h| h == e.hash);
                if !content_matches && out.first_bad_hash.is_none() {
                    out.first_bad_hash = Some(e.event_id.clone());
                }
                block.push(e.event_id.clone());
                scratch.clear();
                frontier.push(leaf_of(account_id, &e.hash)?, &mut scratch);
                for (id, hash) in &scratch {
                    if id.level != STORED_FROM_LEVEL {
                        continue;
                    }
                    if out.first_changed_leaves.is_none()
                        && stored.get(&(id.index as i64)).map(Vec::as_slice) != Some(&hash[..])
                    {
                        out.first_changed_leaves = Some(ChangedLeaves {
                            first_leaf: id.index * BLOCK_LEAVES,
                            event_ids: block.clone(),
                        });
                    }
                    block.clear();
                }
                if frontier.size() == at {
                    out.root_at = Some(frontier.root());
                    out.unstored_at = (!block.is_empty()).then(|| ChangedLeaves {
                        first_leaf: at - block.len() as u64,
                        event_ids: block.clone(),
                    });
                }
            }
        }
        out.events = frontier.size();
        out.root = frontier.root();
        Ok(out)
    }
}
