"""The RPZ primary: the blocking policies' snapshots served as a Response Policy Zone.

With an `[rpz]` section, misp-dns is the primary of a zone that other resolvers (BIND,
Unbound, another misp-dns) follow by zone transfer:

- `zone`: the zone's content built from the policy chain (pure; draft-vixie-dnsop-dns-rpz);
- `messages`: DNS messages filled with records up to 64 KiB, names compressed;
- `history`: the serial (kept on disk, never going back) and the recent deltas for IXFR;
- `transfer`: answering SOA, AXFR and IXFR requests (ACL, TSIG), a transfer as a stream
  of messages;
- `notify`: NOTIFY (RFC 1996) to the secondaries, retried until acknowledged;
- `service`: the service that watches the snapshots and puts the parts together.

docs/rpz.md describes the zone and its configuration.
"""
