#!/usr/bin/env python3
"""
The reference HTTP proxy for bench/run.py: Twisted's own
twisted.web.proxy.ReverseProxyResource at the root of a twisted.web Site.

    python bench/reverse_proxy.py LISTEN_PORT BACKEND_PORT [--reactor poolproxy-epoll]

Listens on 127.0.0.1:LISTEN_PORT and relays every request to
127.0.0.1:BACKEND_PORT, as ReverseProxyResource does: one new backend
connection per request (its ProxyClient sends `Connection: close`).  The
Site's access log is off, as poolproxy's is in the benchmark, so that neither
proxy pays for log lines.  Runs until SIGTERM.  With --reactor poolproxy-epoll
it runs on poolproxy's reactor instead of Twisted's default (to check that a
comparison does not rest on the reactor; docs/performance.md).
"""

import os
import sys

if "--reactor" in sys.argv:
    i = sys.argv.index("--reactor")
    if sys.argv[i + 1] != "poolproxy-epoll":
        sys.exit("reverse_proxy.py: --reactor takes poolproxy-epoll only")
    del sys.argv[i:i + 2]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from poolproxy.reactor import install
    install()

from twisted.internet import reactor  # noqa: E402
from twisted.web.proxy import ReverseProxyResource  # noqa: E402
from twisted.web.server import Site  # noqa: E402


class QuietSite(Site):
    def log(self, request):
        pass


def main() -> None:
    listen, backend = int(sys.argv[1]), int(sys.argv[2])
    site = QuietSite(ReverseProxyResource("127.0.0.1", backend, b""))
    reactor.listenTCP(listen, site, backlog=4096, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
