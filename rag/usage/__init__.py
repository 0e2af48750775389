"""Usage and quotas: what each organisation, user and key spends (tokens of answers, chunks and bytes embedded), by
day, kept in the database the replicas share (`meter.py`, `ledger.py`), and the limits that refuse a request before
it costs anything (`quotas.py`)."""
