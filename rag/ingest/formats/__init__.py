"""Parsers of the formats beyond the first five (`rag/ingest/parsers.py` dispatches to them): slides, sheets and CSV,
e-books, mail, and the OCR that reads scanned pages and images. Each returns `Section`s that say where in the file
their text is (a slide, a sheet's rows, a chapter, an attachment), and fails by `UnreadableFile` naming why. Like
every parser, they run only inside a confined parser process."""
