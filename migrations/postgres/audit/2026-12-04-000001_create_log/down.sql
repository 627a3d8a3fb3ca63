DROP TABLE entries;
DROP TABLE chain_head;
