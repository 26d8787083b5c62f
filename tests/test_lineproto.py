"""
The example codec in examples/lineproto (docs/custom-protocols.md): its
framing, and that a plugin shipped outside poolproxy adds --protocol line to
a real twistd.
"""

from __future__ import annotations

import os
import socket
import sys

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.codec import CLOSE, LOCAL, RETRY_SAFE, ICodec
from tests.interop import Process, recv_until, wait_port
from tests.support import EXAMPLE_LINEPROTO, ROOT, free_port, line_codec, twistd_command


class LineCodecTests(SynchronousTestCase):
    def test_provides_icodec(self) -> None:
        """The example is a complete codec by the interface."""
        self.assertTrue(ICodec.providedBy(line_codec()))

    def test_frames(self) -> None:
        """Lines become frames with their key and flags; a partial line waits."""
        framer = line_codec().request_framer(None)
        frames = framer.feed(b"GET a\nSET b 1\nQUIT\nGET c")
        self.assertEqual([f.data for f in frames], [b"GET a\n", b"SET b 1\n", b"QUIT\n"])
        self.assertEqual([f.key for f in frames[:2]], [b"a", b"b"])
        self.assertEqual(frames[0].flags, RETRY_SAFE)
        self.assertEqual(frames[2].flags, LOCAL | CLOSE)
        self.assertEqual(framer.pending(), 5)

    def test_too_long(self) -> None:
        """A line longer than the limit sets the error instead of buffering."""
        class Options:
            max_request_size = 10
        framer = line_codec().request_framer(Options())
        self.assertEqual(framer.feed(b"x" * 11), [])
        self.assertEqual(framer.error.kind, "too_large")

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), max_size=20),
           st.data())
    def test_any_chunking(self, lines: list, data: st.DataObject) -> None:
        """Any chunking of a stream of lines gives the same frames."""
        stream = b"".join(line + b"\n" for line in lines)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
        framer = line_codec().request_framer(None)
        frames = []
        for a, b in zip([0] + cuts, cuts + [len(stream)]):
            frames += framer.feed(stream[a:b])
        self.assertEqual(b"".join(f.data for f in frames), stream)


class DocsTests(SynchronousTestCase):
    def test_docs_show_the_example(self) -> None:
        """
        docs/custom-protocols.md shows the example's code as it is, from its
        imports to its end, and counts its lines right.
        """
        with open(os.path.join(ROOT, "docs", "custom-protocols.md")) as f:
            docs = f.read()
        with open(os.path.join(EXAMPLE_LINEPROTO, "lineproto.py")) as f:
            example = f.read()
        shown = docs.split("## 2. The codec", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
        self.assertEqual(shown, example[example.index("from typing"):])
        self.assertIn(f" in {len(example.splitlines())} lines.", docs)


class PluginTests(SynchronousTestCase):
    def test_third_party_plugin_adds_protocol(self) -> None:
        """
        With examples/lineproto on PYTHONPATH (as if installed), twistd
        poolproxy --protocol line proxies the line protocol.
        """
        backend = socket.socket()
        self.addCleanup(backend.close)
        backend.bind(("127.0.0.1", 0))
        backend.listen(5)
        port, metrics = free_port(), free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [EXAMPLE_LINEPROTO] + [p for p in sys.path if p]))
        proxy = Process(self, twistd_command(
            "poolproxy", "--protocol", "line", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--backend", f"127.0.0.1:{backend.getsockname()[1]}",
            "--metrics", f"tcp:{metrics}:interface=127.0.0.1"), "proxy", env=env)
        wait_port(port, proxy.proc, log=proxy.log)
        client = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.addCleanup(client.close)
        client.sendall(b"GET a\nGET b\n")
        backend.settimeout(30)
        conn, _ = backend.accept()
        self.addCleanup(conn.close)
        conn.settimeout(30)
        self.assertEqual(recv_until(conn, b"GET b\n"), b"GET a\nGET b\n")
        conn.sendall(b"value-a\nvalue-b\n")
        self.assertEqual(recv_until(client, b"value-b\n"), b"value-a\nvalue-b\n")
        client.sendall(b"QUIT\n")
        self.assertEqual(recv_until(client, b"BYE\n"), b"BYE\n")
