"""Resumable answers: an answer produced apart from the connection that asked for it, its events kept in the chat
database in batches, so that any replica can continue it after a dropped connection, or stop it."""
