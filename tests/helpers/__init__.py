"""Small models and data makers shared by the tests (not part of the package)."""
