"""
The operator's status page, C{/status}, as a real browser sees it: Debian's
Chromium, headless, loads the page from a L{ProxyService} running in the
test's reactor in front of two echo backends, and dumps its DOM or takes a
screenshot.

Chromium is another process, so it runs through L{reactor.spawnProcess} and
never blocks the reactor that serves the page.  Each run is bounded: a hung
browser is killed (its whole process group) and fails the test.  Without
Chromium the tests skip, or fail under C{POOLPROXY_REQUIRE_INTEROP=1} (as
C{.ci/run} sets, which also installs the C{chromium} package).
"""

from __future__ import annotations

import os
import signal
import struct
import sys
from html.parser import HTMLParser
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from poolproxy.ops.status import REFRESH_SECONDS
from tests.interop import binary
from tests.support import metrics_port, wait_for
from tests.test_status import StatusTestCase

log = Logger()

#: Seconds a single Chromium run may take before it is killed and the test fails.
CHROMIUM_TIMEOUT = 60.0

#: No network here but loopback: nothing in the background, no QUIC, no GPU;
#: C{--no-sandbox} because tests may run as root.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Runs the browser as the leader of a new session, so that a timeout can kill
# it together with every helper process (zygote, renderer, GPU) it started.
_SETSID_EXEC = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"


class _Collect(ProcessProtocol):
    """
    Collects a process's output; C{ended} fires with (stdout, stderr, exit
    code) once the process has exited and closed its pipes.  Cancelling
    C{ended} kills the process group.
    """

    def __init__(self) -> None:
        self.out: List[bytes] = []
        self.err: List[bytes] = []
        self.ended: Deferred = Deferred(lambda _: self.kill())
        self.running = True
        self.pid: Optional[int] = None

    def connectionMade(self) -> None:
        # The transport forgets its pid once the process exits; the group outlives it.
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def kill(self) -> None:
        """SIGKILL the process group (the browser and its helpers), if any is left."""
        if not self.pid:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            # Not a group leader yet (setsid not run): the process alone.
            if self.running:
                try:
                    self.transport.signalProcess("KILL")
                except Exception:
                    pass

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        # Helpers that outlived the browser are in its group: end them too.
        if self.pid:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not self.ended.called:
            code = getattr(reason.value, "exitCode", None)
            self.ended.callback((b"".join(self.out), b"".join(self.err), code))


class _Tables(HTMLParser):
    """
    The tables of a page: for each, its header texts and its body rows, a row
    being (the row's class, [(cell text, cell class), ...]); and the
    attributes of every C{<meta>}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tables: List[Dict[str, Any]] = []
        self.metas: List[Dict[str, Optional[str]]] = []
        self._cell: Optional[List[str]] = None
        self._cell_class = ""
        self._row: Optional[Tuple[str, List[Tuple[str, str]]]] = None
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        a = dict(attrs)
        if tag == "meta":
            self.metas.append(a)
        elif tag == "table":
            self.tables.append({"headers": [], "rows": []})
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr":
            self._row = (a.get("class") or "", [])
        elif tag in ("td", "th"):
            self._cell = []
            self._cell_class = a.get("class") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "thead":
            self._in_head = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            text = "".join(self._cell).strip()
            if tag == "th" and self._in_head:
                self.tables[-1]["headers"].append(text)
            else:
                self._row[1].append((text, self._cell_class))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row[1]:
                self.tables[-1]["rows"].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _png_size(data: bytes) -> Tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert data[12:16] == b"IHDR", data[:32]
    return struct.unpack(">II", data[16:24])


class StatusBrowserTests(StatusTestCase):
    """
    /status of a running service in headless Chromium.
    """

    timeout = 3 * CHROMIUM_TIMEOUT

    @inlineCallbacks
    def chromium(self, *args: str) -> Any:
        """
        Run headless Chromium with a fresh profile and C{args}; fire with
        (stdout, stderr), failing the test if it exits non-zero or runs
        longer than L{CHROMIUM_TIMEOUT}.  stderr is kept in a log file.
        """
        browser = binary("chromium")
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        argv = [sys.executable, "-c", _SETSID_EXEC, browser, *CHROMIUM_FLAGS,
                f"--user-data-dir={os.path.join(work, 'profile')}", *args]
        protocol = _Collect()
        reactor.spawnProcess(protocol, sys.executable, argv, env=dict(os.environ), path=work)
        # If the test itself times out first, the browser must not outlive it.
        self.addCleanup(lambda: protocol.running and protocol.kill())
        protocol.ended.addTimeout(CHROMIUM_TIMEOUT, reactor)
        try:
            out, err, code = yield protocol.ended
        finally:
            with open(os.path.join(work, "chromium.log"), "wb") as f:
                f.write(b"".join(protocol.err))
        if code != 0:
            self.fail(f"chromium exited with {code}: {err[-3000:].decode(errors='replace')}")
        return out, err

    @inlineCallbacks
    def running_service(self) -> Any:
        """A service with two echo backends, both pools up; (service, names, url)."""
        service, (a, b), _ = self.two_backends()
        yield wait_for(lambda: all(p.state == "up" for p in service.pools), 5.0,
                       "both pools to connect")
        names = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
        return service, names, f"http://127.0.0.1:{metrics_port(service)}/status"

    @inlineCallbacks
    def test_dom(self) -> None:
        """
        The DOM Chromium builds from /status has a meta refresh every
        REFRESH_SECONDS, a listener table naming the service's listener, and
        a backend table with one row per backend, in order, each named for
        the backend and in state "up" (the cell and the row styled s-up).
        """
        service, names, url = yield self.running_service()
        out, _ = yield self.chromium("--dump-dom", url)
        dom = out.decode("utf-8")
        page = _Tables()
        page.feed(dom)
        page.close()

        refresh = [m for m in page.metas if (m.get("http-equiv") or "").lower() == "refresh"]
        self.assertEqual([m.get("content") for m in refresh], [str(REFRESH_SECONDS)], dom)

        [listeners] = [t for t in page.tables if t["headers"][:1] == ["Listener"]]
        self.assertEqual([cells[0][0] for _, cells in listeners["rows"]],
                         [service.listeners[0].name])

        [backends] = [t for t in page.tables if t["headers"][:1] == ["Backend"]]
        state = backends["headers"].index("State")
        self.assertEqual([cells[0][0] for _, cells in backends["rows"]], names)
        for row_class, cells in backends["rows"]:
            self.assertEqual(len(cells), len(backends["headers"]))
            self.assertEqual(cells[state], ("up", "s-up"))
            self.assertEqual(row_class, "s-up")

    @inlineCallbacks
    def test_screenshot(self) -> None:
        """
        Chromium renders /status to a 1280x900 PNG screenshot of non-trivial
        size, kept in the test's temporary directory (its path is logged).
        """
        _, _, url = yield self.running_service()
        path = os.path.abspath(self.mktemp()) + ".png"
        yield self.chromium(f"--screenshot={path}", "--window-size=1280,900", url)
        log.info("status page screenshot: {path}", path=path)
        self.assertTrue(os.path.exists(path), f"no screenshot at {path}")
        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual(data[:8], PNG_MAGIC)
        self.assertEqual(_png_size(data), (1280, 900))
        # A blank 1280x900 page compresses to a few kB; the tables make it larger.
        self.assertGreater(len(data), 10_000)
