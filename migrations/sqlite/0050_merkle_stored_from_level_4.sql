-- The trees keep only their nodes of level 4 and up (subtrees of 16 leaves): the levels
-- below are recomputed from the account's events when a proof needs them, which spares the
-- append path most of the tree's rows. A node of level 4 now keeps the global position of
-- its last leaf (an inclusion proof searches those to find an event's block); it is taken
-- from that leaf before the leaves go.
UPDATE merkle_nodes SET global_position = (
    SELECT l.global_position FROM merkle_nodes l
    WHERE l.account_id = merkle_nodes.account_id AND l.level = 0 AND l.idx = merkle_nodes.idx * 16 + 15
) WHERE level = 4;
DELETE FROM merkle_nodes WHERE level < 4;
-- Nor is there a head row for every append to rewrite: a tree's head is its stored nodes
-- and the events of its last, incomplete block.
DROP TABLE merkle_heads;
