"""End-to-end tests: the twistd-started server, a real Unbound upstream, dig and dnspython.

The helper modules here (`net`, `wire`, `dig`, `unbound`, `server`, `fake_upstream`) do not
depend on pytest, so `bench/run.py` starts its processes with the same code.
"""
