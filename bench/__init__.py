"""``make bench``: the real server, real peers on loopback, wrk; see ``bench/README.md``."""
