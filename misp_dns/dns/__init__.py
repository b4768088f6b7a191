"""The DNS server core: wire format, listeners, answer cache and upstream forwarding."""
