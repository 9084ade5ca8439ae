"""ssondo_eval: downstream tasks, probes, reports, TS sweep, HEAR API."""
