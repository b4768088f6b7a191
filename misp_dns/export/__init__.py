"""The log exporter: every answered query as a JSON record, to a file, syslog and HTTP.

`exporter.ExporterService` queues the events and feeds the sinks (built from the
`[[export]]` tables by `misp_dns.build.build_exporter`); the record schema is in `record`,
each sink in its own module (`jsonl`, `syslog`, `http`). This package depends only on the
bottom layer (`misp_dns.event`, `misp_dns.interfaces`, `misp_dns.values`) and the shared
`misp_dns.http` client, never on `misp_dns.dns`.
"""
