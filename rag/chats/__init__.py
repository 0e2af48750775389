"""Stored conversations behind one protocol (`sqlite.Conversations`): SQLite under DATA_DIR by default, PostgreSQL
(`postgres.PgConversationStore`) when DATABASE_URL is set, so that a chat continues on any replica."""
