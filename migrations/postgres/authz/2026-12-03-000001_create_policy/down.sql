DROP TABLE outbox;
DROP TABLE resource_parents;
DROP TABLE bindings;
DROP TABLE memberships;
DROP TABLE user_groups;
DROP TABLE role_permissions;
DROP TABLE roles;
DROP TABLE revision;
