"""pipeline: the `ssondo` command line, stage wiring, the demo."""
