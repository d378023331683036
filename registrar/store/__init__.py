"""The inventory: SQLite in WAL mode, shared by the CLI and every server worker."""
