"""A knowledge base in one portable file: the archive format (`format.py`), writing it from a store
(`exporter.py`), checking it (`reader.py`) and loading it into a store (`importer.py`)."""
