DROP TABLE registry_cursors;
DROP TABLE registry_builds;
DROP TABLE registry_versions;
