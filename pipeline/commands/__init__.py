"""One thin click module per stage."""
