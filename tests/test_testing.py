"""
poolproxy.testing's MultiplexHarness, tested on its own: the example codec
of docs/custom-protocols.md wired in memory as the proxy wires it, the
snippet that page shows, and what the harness promises (connects completed
by hand, backends played until quiet, closes delivered, timers on a Clock).
"""

from __future__ import annotations

import os
from typing import Any, List

from twisted.trial.unittest import SynchronousTestCase

from poolproxy.codecs.memcached import MemcachedCodec
from poolproxy.testing import FakeTransport, MultiplexHarness
from tests.support import ROOT, line_codec


def echo_values(connection: FakeTransport, data: bytes) -> bytes:
    """A line backend: `GET k` gets `value-of-k`, anything else `OK`."""
    out = []
    for line in data.splitlines():
        words = line.split()
        out.append(b"value-of-" + words[1] if words[:1] == [b"GET"] else b"OK")
    return b"".join(word + b"\n" for word in out)


class HarnessTests(SynchronousTestCase):
    def test_docs_snippet_runs(self) -> None:
        """The harness example in docs/custom-protocols.md runs as shown."""
        with open(os.path.join(ROOT, "docs", "custom-protocols.md")) as f:
            docs = f.read()
        section = docs.split("**In memory, on a `Clock`**", 1)[1]
        snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
        snippet = "\n".join(line[2:] for line in snippet.splitlines())
        exec(snippet, {"LineCodec": type(line_codec())})

    def test_clients_share_one_connection(self) -> None:
        """Two clients, one shared backend connection, each its own reply."""
        harness = MultiplexHarness(line_codec(), mux_connections=1)
        a, b = harness.client(), harness.client()
        a.send(b"GET x\n")
        b.send(b"GET y\n")
        self.assertEqual(harness.connect(), 1)
        self.assertEqual(len(harness.connections()), 1)
        self.assertEqual(harness.connections()[0].value(), b"GET x\nGET y\n")
        self.assertEqual(harness.serve(echo_values), 1)
        self.assertEqual(a.received(), b"value-of-x\n")
        self.assertEqual(b.received(), b"value-of-y\n")

    def test_serve_repeats_until_quiet(self) -> None:
        """serve() answers again when answers let held frames go."""
        harness = MultiplexHarness(line_codec(), mux_connections=1, max_concurrency=1,
                                   queue_size=10)
        client = harness.client()
        client.send(b"GET a\nGET b\nGET c\n")
        # One admitted at a time: each answer lets the next go.
        self.assertEqual(harness.serve(echo_values), 3)
        self.assertEqual(client.received(), b"value-of-a\nvalue-of-b\nvalue-of-c\n")

    def test_request_timeout_on_clock(self) -> None:
        """Timers run on the harness's Clock: an unanswered request times out."""
        harness = MultiplexHarness(line_codec(), mux_connections=1, request_timeout=2)
        client = harness.client()
        client.send(b"GET slow\n")
        harness.connect()
        harness.clock.advance(1.9)
        self.assertEqual(client.received(), b"")
        harness.clock.advance(0.2)
        self.assertEqual(client.received(), b"ERR timeout backend timed out after 2s\n")
        harness.deliver_losses()
        self.assertEqual(harness.connections(), [])

    def test_close_delivered(self) -> None:
        """A client's QUIT closes it; deliver_losses tells its protocol."""
        harness = MultiplexHarness(line_codec())
        client = harness.client()
        client.send(b"QUIT\n")
        self.assertEqual(client.received(), b"BYE\n")
        self.assertTrue(client.closed)
        self.assertEqual(harness.factory.clients, {client.protocol})
        self.assertEqual(harness.deliver_losses(), 1)
        self.assertEqual(harness.factory.clients, set())

    def test_backends_by_key(self) -> None:
        """With several backends and consistent hashing, each key keeps its backend."""
        harness = MultiplexHarness(line_codec(), backends=3, balance="consistent_hash")
        client = harness.client()
        keys = [b"k%d" % i for i in range(30)]
        client.send(b"".join(b"GET " + k + b"\n" for k in keys))
        harness.connect()
        seen: List[Any] = []
        harness.serve(lambda conn, data: seen.append((conn, data)) or echo_values(conn, data))
        self.assertEqual(client.received(), b"".join(b"value-of-" + k + b"\n" for k in keys))
        self.assertGreater(len({conn for conn, _ in seen}), 1)

    def test_memcached(self) -> None:
        """Another codec, with expectations (needs_expect): get and set interleaved."""
        harness = MultiplexHarness(MemcachedCodec(), mux_connections=1)
        a, b = harness.client(), harness.client()
        a.send(b"get k\r\n")
        b.send(b"set k 0 0 1\r\nv\r\n")

        def memcached(conn: FakeTransport, data: bytes) -> bytes:
            out = b""
            for line in data.split(b"\r\n"):
                if line.startswith(b"get"):
                    out += b"VALUE k 0 1\r\nv\r\nEND\r\n"
                elif line.startswith(b"set"):
                    out += b"STORED\r\n"
            return out

        harness.serve(memcached)
        self.assertEqual(a.received(), b"VALUE k 0 1\r\nv\r\nEND\r\n")
        self.assertEqual(b.received(), b"STORED\r\n")
