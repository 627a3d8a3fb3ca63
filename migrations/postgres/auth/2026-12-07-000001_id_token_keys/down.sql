DROP TABLE id_token_keys;
