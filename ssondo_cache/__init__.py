"""ssondo_cache: everything computed once (packing, teachers, extraction, clustering)."""

__version__ = "0.1.0"
