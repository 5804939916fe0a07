"""The Textual client. Reads SQLite in thread workers; writes only small requests."""
