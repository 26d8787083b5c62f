"""
Backends from DNS for real: a twisted.names DNS server on loopback (its own
process, tests/dns_server.py, serving records this test edits, TTL 1),
redis-servers on 127.0.0.2, 127.0.0.3... (Linux routes all of 127/8 to lo),
and a real poolproxy process asking that server (dns_resolvers) while
redis-py clients use it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from typing import Any, Dict, List

from twisted.trial.unittest import TestCase

from tests.interop import Process, ProxyProcess, binary, module, wait_until
from tests.support import free_port

KEYS = [f"key:{i}" for i in range(10_000)]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


class DnsInteropTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.redis = module("redis")
        binary("redis-server")
        self.port = free_port()  # every redis-server listens on it, each on its own address
        self.zone = os.path.abspath(self.mktemp())
        self.write_zone({})
        self.dns_port = free_udp_port()
        self.dns = Process(self, [sys.executable, "-m", "tests.dns_server", str(self.dns_port),
                                  self.zone], "dns")
        wait_until(lambda: "dns server on" in open(self.dns.log).read(), self.dns.proc,
                   "dns server", log=self.dns.log)

    def write_zone(self, zone: Dict[str, Any]) -> None:
        """Replace the zone at once (rename), as the server reads it at each query."""
        zone = dict(zone, ttl=1)
        with open(self.zone + ".new", "w") as f:
            json.dump(zone, f)
        os.rename(self.zone + ".new", self.zone)

    def redis_on(self, host: str) -> Any:
        """A redis-server on host:self.port, and a client of it."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        p = Process(self, [binary("redis-server"), "--port", str(self.port), "--bind", host,
                           "--save", "", "--appendonly", "no", "--daemonize", "no",
                           "--dir", directory], f"redis-{host}")
        wait_until(lambda: accepts(host, self.port), p.proc, f"redis on {host}", log=p.log)
        return self.redis.Redis(host=host, port=self.port, socket_timeout=10)

    def proxy(self, backend: str) -> ProxyProcess:
        return ProxyProcess(self, "redis", [], "--backend", backend,
                            "--dns-resolvers", f"127.0.0.1:{self.dns_port}",
                            "--dns-min-ttl", "0.5", "--dns-empty-hold", "5",
                            "--shutdown-timeout", "5")

    def wait_backends(self, proxy: ProxyProcess, names: List[str]) -> None:
        """Until the cluster's backends are exactly C{names}."""
        def current() -> List[str]:
            found = []
            for key in proxy.metrics():
                if key.startswith("poolproxy_backend_weight{"):
                    labels = dict(kv.split("=", 1) for kv in key[key.index("{") + 1:-1].split(","))
                    found.append(labels["backend"])
            return sorted(found)

        wait_until(lambda: current() == sorted(names), proxy.process.proc,
                   f"backends {names}", log=proxy.process.log)

    def test_add_and_remove_under_traffic(self) -> None:
        """
        An address added to the name takes traffic; an address removed
        drains; redis-py clients running all along see no error.
        """
        servers = {host: self.redis_on(host) for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4")}
        self.write_zone({"a": {"cache.test": ["127.0.0.2", "127.0.0.3"]}})
        proxy = self.proxy(f"dns:cache.test:{self.port}")
        self.wait_backends(proxy, [f"127.0.0.2:{self.port}", f"127.0.0.3:{self.port}"])

        stop = threading.Event()
        errors: List[str] = []
        done = [0]

        def traffic(n: int) -> None:
            client = self.redis.Redis(port=proxy.port, socket_timeout=10)
            i = 0
            while not stop.is_set():
                key = f"t{n}:{i % 500}"
                try:
                    client.set(key, "v")
                    client.get(key)
                    done[0] += 1
                except Exception as e:  # every kind of client error counts
                    errors.append(f"{type(e).__name__}: {e}")
                i += 1

        threads = [threading.Thread(target=traffic, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: done[0] > 500, proxy.process.proc, "traffic", log=proxy.process.log)
            self.write_zone({"a": {"cache.test": ["127.0.0.2", "127.0.0.3", "127.0.0.4"]}})
            wait_until(lambda: servers["127.0.0.4"].dbsize() > 0, proxy.process.proc,
                       "keys on the added address", log=proxy.process.log)
            self.write_zone({"a": {"cache.test": ["127.0.0.3", "127.0.0.4"]}})
            self.wait_backends(proxy, [f"127.0.0.3:{self.port}", f"127.0.0.4:{self.port}"])
            servers["127.0.0.2"].flushall()
            before = done[0]
            wait_until(lambda: done[0] > before + 1000, proxy.process.proc, "more traffic",
                       log=proxy.process.log)
            # Nothing goes to the removed address any more.
            self.assertEqual(servers["127.0.0.2"].dbsize(), 0)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertEqual(errors, [])
        self.assertEqual(proxy.metric("poolproxy_dns_failures_total"), 0)

    def test_srv_target_moves_keys_stay(self) -> None:
        """
        Through the proxy, 10,000 keys land on the same SRV targets before
        and after one target changes its address (to a new, empty server).
        """
        hosts = {"r1.cache.test": "127.0.0.2", "r2.cache.test": "127.0.0.3",
                 "r3.cache.test": "127.0.0.4"}
        servers = {host: self.redis_on(host) for host in
                   ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")}
        srv = [[10, 1, self.port, target] for target in sorted(hosts)]

        def zone() -> Dict[str, Any]:
            return {"srv": {"_redis._tcp.cache.test": srv},
                    "a": {target: [address] for target, address in hosts.items()}}

        self.write_zone(zone())
        proxy = self.proxy("srv:_redis._tcp.cache.test")
        self.wait_backends(proxy, [f"{t}:{self.port}" for t in sorted(hosts)])
        client = self.redis.Redis(port=proxy.port, socket_timeout=30)

        def mapping() -> Dict[str, str]:
            """Each key's target: SET through the proxy, found on the servers."""
            for server in servers.values():
                server.flushall()
            pipe = client.pipeline(transaction=False)
            for key in KEYS:
                pipe.set(key, "1")
            pipe.execute()
            target_of = {address: target for target, address in hosts.items()}
            found: Dict[str, str] = {}
            for address, server in servers.items():
                for key in server.scan_iter(count=1000):
                    found[key.decode()] = target_of[address]
            return found

        before = mapping()
        self.assertEqual(len(before), len(KEYS))
        self.assertEqual(sorted(set(before.values())), sorted(hosts))

        hosts["r3.cache.test"] = "127.0.0.5"
        self.write_zone(zone())
        probe = next(k for k in KEYS if before[k] == "r3.cache.test")

        def moved() -> bool:
            client.set(probe, "1")
            return bool(servers["127.0.0.5"].exists(probe))

        wait_until(moved, proxy.process.proc, "r3 at its new address", log=proxy.process.log)
        after = mapping()
        self.assertEqual(after, before)
        self.assertGreater(servers["127.0.0.5"].dbsize(), 0)
        self.assertEqual(servers["127.0.0.4"].dbsize(), 0)
