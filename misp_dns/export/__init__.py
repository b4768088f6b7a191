"""The log exporter: every answered query as a JSON record, to a file, syslog and HTTP.

`exporter.build_exporter` builds the `ExporterService` for the `[[export]]` tables; the
record schema is in `record`, each sink in its own module (`jsonl`, `syslog`, `http`).
"""
