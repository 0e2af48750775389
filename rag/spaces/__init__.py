"""Embedding spaces: a store per embedding model, so the model can change without downtime (blue-green).

The service serves one space, the active one. Asking for another embedder registers a new space, and the space builder
(`builder.py`, a background job in one replica) embeds every stored document with it into a store of its own beside
the active one, then keeps it following the active store (`sync.py`): new, changed and deleted documents reach it
within a pass. Searches and chats use the active space meanwhile. Activating the new space is one switch, made while
writes are held off, after which every replica serves it (`active.py`); the old space then follows the new one, so
switching back is the same step, until the old space is dropped. `registry.py` records it all.
"""
