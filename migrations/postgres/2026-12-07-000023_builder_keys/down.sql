DROP TABLE builder_keys;
