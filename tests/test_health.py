"""
Tests of L{poolproxy.backends.health}: L{HealthCheck} on a L{Clock} with a probe the
test fires by hand; the probes on L{FakeEndpoint}; and the probes over real
loopback sockets against small servers written here.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectingCancelledError, ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from poolproxy.backends.health import (
    HEALTHY,
    UNHEALTHY,
    UNKNOWN,
    HealthCheck,
    ProbeFailed,
    codec_probe,
    http_probe,
    postgres_probe,
    tcp_probe,
)
from poolproxy.codecs import postgres as pg
from poolproxy.codecs.memcached import codec as memcached_codec
from poolproxy.codecs.postgres_auth import md5_hash, md5_response
from poolproxy.codecs.postgres_login import LoginCredentials, ServerLogin
from poolproxy.codecs.redis import codec as redis_codec
from poolproxy.codecs.tcp import codec as tcp_codec
from poolproxy.testing import FakeEndpoint

from tests.support import free_port, wait_for

PING = b"*1\r\n$4\r\nPING\r\n"


class FakeProbe:
    """
    A probe whose every call returns a new L{Deferred} that the test fires.

    @ivar calls: every Deferred returned, oldest first.
    @ivar cancelled: how many were cancelled.
    @ivar cancel_error: what a cancelled Deferred fails with (L{None}: the
        usual L{CancelledError}).
    """

    def __init__(self, cancel_error: Optional[Exception] = None) -> None:
        self.calls: List["Deferred[None]"] = []
        self.cancelled = 0
        self.cancel_error = cancel_error

    def __call__(self) -> "Deferred[None]":
        def cancel(d: "Deferred[None]") -> None:
            self.cancelled += 1
            if self.cancel_error is not None:
                d.errback(self.cancel_error)

        d: "Deferred[None]" = Deferred(cancel)
        self.calls.append(d)
        return d

    @property
    def pending(self) -> List["Deferred[None]"]:
        return [d for d in self.calls if not d.called]

    def succeed(self) -> None:
        """Fire the one pending probe with success."""
        [d] = self.pending
        d.callback(None)

    def fail(self, why: str = "backend says no") -> None:
        """Fail the one pending probe."""
        [d] = self.pending
        d.errback(ProbeFailed(why))


class HealthCheckTests(SynchronousTestCase):
    def make_check(self, probe: Any = None, **kwargs: Any) -> HealthCheck:
        self.clock = Clock()
        self.probe = FakeProbe() if probe is None else probe
        self.changes: List[Tuple[str, str, str]] = []
        settings = dict(interval=2.0, timeout=1.0, rise=2, fall=3)
        settings.update(kwargs)
        check = HealthCheck("backend-a", self.probe, clock=self.clock,
                            on_change=lambda *change: self.changes.append(change),
                            **settings)  # type: ignore[arg-type]
        self.addCleanup(self.assert_stops_cleanly, check)
        return check

    def assert_stops_cleanly(self, check: HealthCheck) -> None:
        """
        Stopping the check leaves no timer and no probe in flight.
        """
        check.stop()
        self.assertFalse(check.running)
        self.assertFalse(check.probing)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        if isinstance(self.probe, FakeProbe):
            self.assertEqual(self.probe.pending, [])

    def test_starts_unknown_and_available(self) -> None:
        """
        A new check is unknown, counts as healthy (routable), and probes
        nothing before it is started.
        """
        check = self.make_check()
        self.assertEqual(check.state, UNKNOWN)
        self.assertTrue(check.healthy)
        self.assertEqual(check.last_error, "")
        self.assertEqual((check.probes_ok, check.probes_failed, check.transitions), (0, 0, 0))
        self.assertEqual(self.probe.calls, [])

    def test_first_success_makes_healthy(self) -> None:
        """
        From unknown, the first successful probe makes the check healthy,
        whatever C{rise} is.
        """
        check = self.make_check(rise=5)
        check.start()
        self.assertEqual(len(self.probe.calls), 1)
        self.probe.succeed()
        self.assertEqual(check.state, HEALTHY)
        self.assertEqual(check.probes_ok, 1)
        self.assertEqual(check.transitions, 1)
        self.assertEqual(self.changes, [(UNKNOWN, HEALTHY, "the first probe succeeded")])

    def test_fall_failures_make_unhealthy(self) -> None:
        """
        C{fall} failures in a row make the check unhealthy; fewer keep it
        where it was (unknown here, still routable), with the reason kept.
        """
        check = self.make_check(fall=3)
        check.start()
        self.probe.fail("nope 1")
        self.clock.advance(2)
        self.probe.fail("nope 2")
        self.assertEqual(check.state, UNKNOWN)
        self.assertTrue(check.healthy)
        self.assertEqual(check.last_error, "nope 2")
        self.clock.advance(2)
        self.probe.fail("nope 3")
        self.assertEqual(check.state, UNHEALTHY)
        self.assertFalse(check.healthy)
        self.assertEqual(check.last_error, "nope 3")
        self.assertEqual(check.probes_failed, 3)
        self.assertEqual(self.changes, [
            (UNKNOWN, UNHEALTHY, "3 probes in a row failed, the last: nope 3")])

    def test_success_resets_the_failure_streak(self) -> None:
        """
        Failures must be consecutive: a success in between starts the count
        again.
        """
        check = self.make_check(fall=2)
        check.start()
        self.probe.succeed()
        for result in ("fail", "succeed", "fail"):
            self.clock.advance(2)
            getattr(self.probe, result)()
        self.assertEqual(check.state, HEALTHY)
        self.clock.advance(2)
        self.probe.fail()
        self.assertEqual(check.state, UNHEALTHY)

    def test_rise_successes_make_healthy_again(self) -> None:
        """
        From unhealthy, C{rise} successes in a row are needed; a failure in
        between starts the count again.  Turning healthy clears
        C{last_error}.
        """
        check = self.make_check(rise=2, fall=1)
        check.start()
        self.probe.fail("down")
        self.assertEqual(check.state, UNHEALTHY)
        for result in ("succeed", "fail", "succeed"):
            self.clock.advance(2)
            getattr(self.probe, result)()
            self.assertEqual(check.state, UNHEALTHY)
        self.clock.advance(2)
        self.probe.succeed()
        self.assertEqual(check.state, HEALTHY)
        self.assertEqual(check.last_error, "")
        self.assertEqual((check.probes_ok, check.probes_failed), (3, 2))
        self.assertEqual(self.changes[-1], (UNHEALTHY, HEALTHY, "2 probes in a row succeeded"))

    def test_on_change_sequence(self) -> None:
        """
        C{on_change} is called once per state change, in order, with the old
        and new states; C{transitions} counts them.
        """
        check = self.make_check(rise=1, fall=1)
        check.start()
        for result in ("succeed", "succeed", "fail", "fail", "succeed"):
            getattr(self.probe, result)()
            self.clock.advance(2)
        self.assertEqual([(old, new) for old, new, _ in self.changes],
                         [(UNKNOWN, HEALTHY), (HEALTHY, UNHEALTHY), (UNHEALTHY, HEALTHY)])
        self.assertEqual(check.transitions, 3)

    def test_probes_every_interval(self) -> None:
        """
        The loop probes at once on start, then every C{interval} seconds.
        """
        check = self.make_check(interval=2.0)
        check.start()
        self.assertEqual(len(self.probe.calls), 1)
        self.probe.succeed()
        self.clock.advance(1.9)
        self.assertEqual(len(self.probe.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.probe.calls), 2)
        self.probe.succeed()
        self.clock.advance(2)
        self.assertEqual(len(self.probe.calls), 3)
        self.probe.succeed()

    def test_start_later(self) -> None:
        """
        C{start(now=False)} waits one interval before the first probe; a
        second C{start} does nothing.
        """
        check = self.make_check()
        check.start(now=False)
        check.start()
        self.assertEqual(self.probe.calls, [])
        self.clock.advance(2)
        self.assertEqual(len(self.probe.calls), 1)
        self.probe.succeed()

    def test_timeout_is_a_failure(self) -> None:
        """
        A probe still running after C{timeout} is cancelled and counted as a
        failure whose reason says so.
        """
        check = self.make_check(timeout=1.5, fall=1)
        check.start()
        self.clock.advance(1.4)
        self.assertTrue(check.probing)
        self.clock.advance(0.1)
        self.assertFalse(check.probing)
        self.assertEqual(self.probe.cancelled, 1)
        self.assertEqual(check.probes_failed, 1)
        self.assertEqual(check.last_error, "probe timed out after 1.5s")
        self.assertEqual(check.state, UNHEALTHY)

    def test_timeout_when_cancel_fails_otherwise(self) -> None:
        """
        A probe that fails with something other than L{CancelledError} when
        cancelled (as a TCP endpoint's connect does, with
        L{ConnectingCancelledError}) still counts as a timeout.
        """
        probe = FakeProbe(cancel_error=ConnectingCancelledError(None))
        check = self.make_check(probe, timeout=1.0)
        check.start()
        self.clock.advance(1.0)
        self.assertEqual(check.probes_failed, 1)
        self.assertEqual(check.last_error, "probe timed out after 1s")

    def test_a_success_cancels_the_timeout(self) -> None:
        """
        A probe that answers in time leaves only the loop's own timer.
        """
        check = self.make_check()
        check.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.probe.succeed()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.0)
        self.assertEqual(check.probes_failed, 0)

    def test_no_overlapping_probes(self) -> None:
        """
        While a probe runs, due ticks and C{check_now} start no other; the
        next tick after it ends does.
        """
        check = self.make_check(interval=1.0, timeout=10.0)
        check.start()
        self.clock.advance(1)
        self.clock.advance(1)
        waiting = check.check_now()
        self.assertEqual(len(self.probe.calls), 1)
        self.assertNoResult(waiting)
        self.probe.succeed()
        self.assertEqual(self.successResultOf(waiting), HEALTHY)
        self.clock.advance(1)
        self.assertEqual(len(self.probe.calls), 2)
        self.probe.succeed()

    def test_check_now(self) -> None:
        """
        C{check_now} probes at once, running or not, and its Deferred fires
        with the state once the outcome is counted.  It leaves no timer.
        """
        check = self.make_check(fall=1)
        d = check.check_now()
        self.assertEqual(len(self.probe.calls), 1)
        self.assertNoResult(d)
        self.probe.fail("refused")
        self.assertEqual(self.successResultOf(d), UNHEALTHY)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_check_now_cancelled(self) -> None:
        """
        Cancelling C{check_now}'s Deferred only stops waiting: the probe
        still runs and counts.
        """
        check = self.make_check()
        d = check.check_now()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.probe.succeed()
        self.assertEqual(check.state, HEALTHY)

    def test_stop_cleans_up(self) -> None:
        """
        C{stop} cancels the probe in flight and the loop, leaves no timer,
        does not count the abandoned probe, and ignores a late answer.
        """
        check = self.make_check()
        check.start()
        waiting = check.check_now()
        check.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.probe.cancelled, 1)
        self.assertEqual(self.probe.pending, [])
        self.assertEqual(self.successResultOf(waiting), UNKNOWN)
        self.assertEqual((check.probes_ok, check.probes_failed), (0, 0))
        self.clock.advance(100)
        self.assertEqual(len(self.probe.calls), 1)

    def stuck_probe(self) -> "Tuple[Callable[[], Deferred[None]], Deferred[None]]":
        """
        A probe whose Deferred cancelling cannot fire: it has its result
        already but is paused, as one waiting on something outside Deferreds
        would be.
        """
        stuck: "Deferred[None]" = Deferred()
        stuck.pause()
        stuck.callback(None)
        return (lambda: stuck), stuck

    def test_timeout_of_a_probe_that_ignores_cancel(self) -> None:
        """
        A probe that does not stop when cancelled is still counted as timed
        out at its timeout, and its late answer is ignored.
        """
        probe, stuck = self.stuck_probe()
        check = self.make_check(probe, timeout=1.0, fall=1)
        check.start()
        self.clock.advance(1.0)
        self.assertFalse(check.probing)
        self.assertEqual(check.state, UNHEALTHY)
        self.assertEqual(check.last_error, "probe timed out after 1s")
        stuck.unpause()
        self.assertEqual(check.state, UNHEALTHY)
        self.assertEqual((check.probes_ok, check.probes_failed), (0, 1))

    def test_stop_ignores_a_late_answer(self) -> None:
        """
        A probe that answers after C{stop} abandoned it changes nothing.
        """
        probe, stuck = self.stuck_probe()
        check = self.make_check(probe)
        check.start()
        check.stop()
        stuck.unpause()
        self.assertEqual(check.state, UNKNOWN)
        self.assertEqual((check.probes_ok, check.probes_failed), (0, 0))

    def test_restart_after_stop(self) -> None:
        """
        A stopped check can be started again; counts are kept.
        """
        check = self.make_check(fall=1)
        check.start()
        self.probe.fail()
        check.stop()
        check.start()
        self.assertEqual(len(self.probe.calls), 2)
        self.probe.succeed()
        self.assertEqual((check.probes_ok, check.probes_failed), (1, 1))

    def test_probe_raising_is_a_failure(self) -> None:
        """
        A probe that raises synchronously is a failed probe with its
        message, not a crash: the loop goes on probing.
        """
        calls: List[float] = []

        def probe() -> "Deferred[None]":
            calls.append(self.clock.seconds())
            raise RuntimeError("cannot even start")

        check = self.make_check(probe, fall=2)
        check.start()
        self.assertEqual(check.probes_failed, 1)
        self.assertEqual(check.last_error, "cannot even start")
        self.assertTrue(check.running)
        self.clock.advance(2)
        self.clock.advance(2)
        self.assertEqual(calls, [0, 2, 4])
        self.assertEqual(check.state, UNHEALTHY)
        self.assertEqual(check.probes_failed, 3)

    def test_probe_failure_without_message(self) -> None:
        """
        A failure without a message is reported by its exception's name.
        """
        check = self.make_check()
        check.start()
        [d] = self.probe.pending
        d.errback(ConnectionRefusedError())
        self.assertIn("Connection was refused", check.last_error)
        self.clock.advance(2)
        [d] = self.probe.pending
        d.errback(KeyError())
        self.assertEqual(check.last_error, "KeyError")

    def test_loop_survives_on_change_exceptions(self) -> None:
        """
        An C{on_change} that raises is logged; the state still changes and
        the loop keeps probing.
        """
        self.clock = Clock()
        self.probe = FakeProbe()

        def on_change(old: str, new: str, why: str) -> None:
            raise ValueError("listener broke")

        check = HealthCheck("backend-a", self.probe, interval=1.0, timeout=0.5, rise=1,
                            fall=1, clock=self.clock, on_change=on_change)
        self.addCleanup(self.assert_stops_cleanly, check)
        check.start()
        self.probe.succeed()
        self.assertEqual(check.state, HEALTHY)
        self.clock.advance(1)
        self.probe.fail()
        self.assertEqual(check.state, UNHEALTHY)
        self.assertTrue(check.running)
        self.clock.advance(1)
        self.assertEqual(len(self.probe.pending), 1)
        self.probe.succeed()
        self.assertEqual(check.state, HEALTHY)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 3)

    def test_bad_settings(self) -> None:
        """
        Non-positive intervals or timeouts, and rise or fall below 1, are
        refused.
        """
        for bad in (dict(interval=0), dict(timeout=-1), dict(rise=0), dict(fall=0)):
            settings: Any = dict(interval=1, timeout=1, rise=1, fall=1)
            settings.update(bad)
            self.assertRaises(ValueError, HealthCheck, "b", FakeProbe(), clock=Clock(),
                              **settings)


class ProbeUnitTests(SynchronousTestCase):
    """
    The probes over L{FakeEndpoint}: every path closes the connection.
    """

    def setUp(self) -> None:
        self.endpoint = FakeEndpoint()

    def test_codec_probe_sends_and_closes_gracefully(self) -> None:
        """
        The redis probe sends PING, passes on +PONG even in pieces, and then
        closes the connection without aborting it.
        """
        d = codec_probe(self.endpoint, redis_codec)()
        [transport] = self.endpoint.succeed()
        self.assertEqual(transport.value(), PING)
        transport.protocol.dataReceived(b"+PO")
        self.assertNoResult(d)
        transport.protocol.dataReceived(b"NG\r\n")
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        transport.lose()

    def test_wrong_answer_aborts(self) -> None:
        """
        A wrong answer fails the probe with the answer quoted, and aborts
        the connection; bytes after it are ignored.
        """
        d = codec_probe(self.endpoint, redis_codec)()
        [transport] = self.endpoint.succeed()
        transport.protocol.dataReceived(b"-LOADING loading the dataset\r\n+PONG\r\n")
        failure = self.failureResultOf(d, ProbeFailed)
        self.assertEqual(failure.getErrorMessage(),
                         "unexpected answer b'-LOADING loading the dataset\\r\\n'")
        self.assertTrue(transport.aborted)
        transport.lose()

    def test_connection_lost_before_answer(self) -> None:
        """
        A backend that closes before answering fails the probe with why.
        """
        d = codec_probe(self.endpoint, redis_codec)()
        [transport] = self.endpoint.succeed()
        transport.lose()
        failure = self.failureResultOf(d, ProbeFailed)
        self.assertIn("connection closed before the answer", failure.getErrorMessage())

    def test_connect_failure(self) -> None:
        """
        A failed connect fails the probe with the endpoint's error.
        """
        d = tcp_probe(self.endpoint)()
        self.endpoint.fail()
        self.failureResultOf(d, ConnectionRefusedError)

    def test_tcp_probe_closes_at_once(self) -> None:
        """
        The TCP probe passes on connect and closes the connection at once,
        sending nothing.
        """
        d = tcp_probe(self.endpoint)()
        self.assertNoResult(d)
        [transport] = self.endpoint.succeed()
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        transport.lose()

    def test_cancel_while_connecting(self) -> None:
        """
        Cancelling a probe that is connecting cancels the connect; the probe
        fails with L{CancelledError}, not the endpoint's
        L{ConnectingCancelledError}, which is not left unhandled.
        """
        d = http_probe(self.endpoint)()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.endpoint.cancelled, 1)
        self.assertEqual(self.endpoint.attempts, [])

    def test_cancel_while_connected(self) -> None:
        """
        Cancelling a probe waiting for its answer aborts the connection; a
        late answer is ignored.
        """
        d = codec_probe(self.endpoint, memcached_codec)()
        [transport] = self.endpoint.succeed()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(transport.aborted)
        transport.protocol.dataReceived(b"VERSION 1.6\r\n")
        transport.lose()

    def test_http_request(self) -> None:
        """
        The HTTP probe sends the documented request, passes on a 2xx after a
        100 Continue, and closes.
        """
        d = http_probe(self.endpoint, b"/health?full=1", b"db.internal")()
        [transport] = self.endpoint.succeed()
        self.assertEqual(transport.value(),
                         b"GET /health?full=1 HTTP/1.1\r\nHost: db.internal\r\n"
                         b"Connection: close\r\n\r\n")
        transport.protocol.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertNoResult(d)
        transport.protocol.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.successResultOf(d)
        self.assertFalse(transport.aborted)
        transport.lose()

    def test_http_malformed(self) -> None:
        """
        A response that is not HTTP fails the probe as malformed.
        """
        d = http_probe(self.endpoint)()
        [transport] = self.endpoint.succeed()
        transport.protocol.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        failure = self.failureResultOf(d, ProbeFailed)
        self.assertIn("malformed answer", failure.getErrorMessage())
        self.assertTrue(transport.aborted)
        transport.lose()

    def test_http_bad_arguments(self) -> None:
        """
        A path or host that could inject headers, or a path that is not
        absolute, is refused when the probe is made.
        """
        self.assertRaises(ValueError, http_probe, self.endpoint, b"/a\r\nX-Evil: 1")
        self.assertRaises(ValueError, http_probe, self.endpoint, b"health")
        self.assertRaises(ValueError, http_probe, self.endpoint, b"/", b"a b")
        self.assertRaises(ValueError, http_probe, self.endpoint, b"/", b"")

    def test_codec_without_probe_frame(self) -> None:
        """
        A codec whose probe() is None gets a TCP probe.
        """
        d = codec_probe(self.endpoint, tcp_codec)()
        [transport] = self.endpoint.succeed()
        self.successResultOf(d)
        self.assertEqual(transport.value(), b"")
        transport.lose()


class PostgresProbeTests(SynchronousTestCase):
    """
    L{postgres_probe} over L{FakeEndpoint}, the server scripted: a login
    (a real L{ServerLogin}), SELECT 1, Terminate.
    """

    WELCOME = (pg.authentication(pg.AUTH_OK) + pg.parameter_status(b"server_version", b"15")
               + pg.backend_key_data(1, b"key1") + pg.ready_for_query())
    ANSWER = (pg.message(b"T", b"\0\x01?column?\0" + b"\0" * 18)
              + pg.message(b"D", b"\0\x01\0\0\0\x011") + pg.message(b"C", b"SELECT 1\0")
              + pg.ready_for_query())

    def setUp(self) -> None:
        self.endpoint = FakeEndpoint()

    def probe(self) -> "Deferred[None]":
        return postgres_probe(self.endpoint, lambda: ServerLogin(
            b"checker", b"postgres", LoginCredentials(password="pw")))()

    def logged_in(self) -> Tuple["Deferred[None]", Any]:
        d = self.probe()
        [transport] = self.endpoint.succeed()
        startup, _ = pg.read_startup(transport.value())
        assert startup is not None
        self.assertEqual((startup.user, startup.database), (b"checker", b"postgres"))
        transport.clear()
        transport.protocol.dataReceived(pg.authentication(pg.AUTH_MD5, b"salt"))
        self.assertEqual(transport.value(), pg.password_message(
            md5_response(md5_hash("pw", "checker"), b"salt") + b"\0"))
        transport.clear()
        transport.protocol.dataReceived(self.WELCOME)
        self.assertEqual(transport.value(), pg.query(b"SELECT 1"))
        transport.clear()
        return d, transport

    def test_login_select_terminate(self) -> None:
        """
        The probe logs in (md5 with the password), sends SELECT 1, passes on
        its row, CommandComplete and ReadyForQuery, then says Terminate and
        closes gracefully.
        """
        d, transport = self.logged_in()
        self.assertNoResult(d)
        transport.protocol.dataReceived(self.ANSWER)
        self.successResultOf(d)
        self.assertEqual(transport.value(), pg.TERMINATE)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        transport.lose()

    def test_any_chunking(self) -> None:
        """The login and the answer one byte at a time pass too."""
        d = self.probe()
        [transport] = self.endpoint.succeed()
        for byte in (self.WELCOME + self.ANSWER):
            transport.protocol.dataReceived(bytes([byte]))
        self.successResultOf(d)
        transport.lose()

    def test_tls_asked_for_first(self) -> None:
        """
        With backend_tls the probe sends an SSLRequest and nothing else until
        the answer; a server that says N, or sends bytes after its S (not
        under TLS: CVE-2021-23222's class), or anything else, fails it, and
        no login goes out in plain text.  (The handshake and the login
        under it: tests/test_interop_postgres_tls.py.)
        """
        creator = object()
        for answer, why in [(b"N", "does not accept TLS"),
                            (b"S" + pg.authentication(pg.AUTH_OK), "unencrypted data after"),
                            (b"E", "neither S nor N")]:
            d = postgres_probe(self.endpoint, lambda: ServerLogin(
                b"checker", b"postgres", LoginCredentials(password="pw")),
                tls=creator)()  # type: ignore[arg-type]
            [transport] = self.endpoint.succeed()
            self.assertEqual(transport.value(), pg.ssl_request())
            transport.clear()
            transport.protocol.dataReceived(answer)
            self.assertIn(why, self.failureResultOf(d, ProbeFailed).getErrorMessage())
            self.assertEqual(transport.value(), b"")
            transport.lose()

    def test_login_refused(self) -> None:
        """A refused login fails the probe with the server's SQLSTATE and message."""
        d = self.probe()
        [transport] = self.endpoint.succeed()
        transport.protocol.dataReceived(pg.error_response(
            b"28P01", 'password authentication failed for user "checker"', b"FATAL"))
        failure = self.failureResultOf(d, ProbeFailed)
        self.assertEqual(failure.getErrorMessage(), 'login failed: 28P01: password '
                         'authentication failed for user "checker"')
        self.assertTrue(transport.aborted)
        transport.lose()

    def test_query_error(self) -> None:
        """An ErrorResponse to SELECT 1 fails the probe with it."""
        d, transport = self.logged_in()
        transport.protocol.dataReceived(
            pg.error_response(b"57P01", "terminating connection due to administrator command",
                              b"FATAL"))
        failure = self.failureResultOf(d, ProbeFailed)
        self.assertEqual(failure.getErrorMessage(), "SELECT 1 failed: 57P01: terminating "
                         "connection due to administrator command")
        self.assertTrue(transport.aborted)
        transport.lose()

    def test_no_row(self) -> None:
        """ReadyForQuery without a row fails the probe."""
        d, transport = self.logged_in()
        transport.protocol.dataReceived(pg.message(b"C", b"SELECT 0\0") + pg.ready_for_query())
        self.assertIn("returned no row", self.failureResultOf(d, ProbeFailed).getErrorMessage())

    def test_garbage(self) -> None:
        """A server that answers the query with what PostgreSQL never sends fails it."""
        d, transport = self.logged_in()
        transport.protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertIsNotNone(self.failureResultOf(d, ProbeFailed))
        self.assertTrue(transport.aborted)

    def test_closed_during_login(self) -> None:
        """The server closes during the login: the probe fails, saying so."""
        d = self.probe()
        [transport] = self.endpoint.succeed()
        transport.lose()
        self.assertIn("connection closed before the answer",
                      self.failureResultOf(d, ProbeFailed).getErrorMessage())


# -- real sockets ----------------------------------------------------------------

class Canned(Protocol):
    """
    A test backend: records what it gets and, on the first bytes, answers
    C{factory.answer} (L{None}: never answers).
    """

    factory: "CannedFactory"

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        first = not self.received
        self.received += data
        if first and self.factory.answer is not None:
            assert self.transport is not None
            self.transport.write(self.factory.answer)


class CannedFactory(Factory):
    noisy = False

    def __init__(self, answer: Optional[bytes]) -> None:
        self.answer = answer
        self.built: List[Canned] = []

    def buildProtocol(self, addr: Any) -> Any:
        p = Canned()
        p.factory = self
        self.built.append(p)
        return p


@implementer(IStreamClientEndpoint)
class TrackingEndpoint:
    """
    A loopback TCP endpoint that keeps track of its open connections, so
    that tests can wait until the probe's side is closed too.
    """

    def __init__(self, port: int) -> None:
        self._inner = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
        self._wrappers: List[WrappingFactory] = []

    def connect(self, factory: IProtocolFactory) -> "Deferred[Any]":
        wrapper = WrappingFactory(factory)
        self._wrappers.append(wrapper)
        return self._inner.connect(wrapper)

    @property
    def open(self) -> int:
        return sum(len(w.protocols) for w in self._wrappers)


class RealSocketTests(TestCase):
    """
    The probes against servers on 127.0.0.1, on the real reactor.  Every
    test waits until both ends of every connection are closed.
    """

    def serve(self, factory: Any) -> TrackingEndpoint:
        """
        Listen with C{factory} on an ephemeral loopback port; return an
        endpoint for it.  Cleanup waits for every connection to close, then
        stops listening.
        """
        server = WrappingFactory(factory)
        port: Any = reactor.listenTCP(0, server, interface="127.0.0.1")  # type: ignore[arg-type]
        endpoint = TrackingEndpoint(port.getHost().port)

        @inlineCallbacks
        def cleanup() -> Any:
            try:
                yield wait_for(lambda: not server.protocols and not endpoint.open,
                               what="every connection to close")
            finally:
                yield port.stopListening()

        self.addCleanup(cleanup)
        return endpoint

    def canned(self, answer: Optional[bytes]) -> Tuple[TrackingEndpoint, CannedFactory]:
        factory = CannedFactory(answer)
        return self.serve(factory), factory

    @inlineCallbacks
    def assert_probe_fails(self, probe: Callable[[], "Deferred[None]"],
                           exception: Any = ProbeFailed) -> Any:
        try:
            yield probe()
        except exception as e:
            return str(e)
        self.fail("the probe passed")

    @inlineCallbacks
    def test_tcp_probe_ok(self) -> Any:
        """
        The TCP probe passes against a listening server, which sees the
        connection opened and closed without a byte.
        """
        endpoint, factory = self.canned(None)
        yield tcp_probe(endpoint)()
        yield wait_for(lambda: factory.built, what="the server to accept")
        self.assertEqual(factory.built[0].received, b"")

    @inlineCallbacks
    def test_tcp_probe_refused(self) -> Any:
        """
        The TCP probe fails with ConnectionRefusedError on a port nothing
        listens on.
        """
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", free_port())
        why = yield self.assert_probe_fails(tcp_probe(endpoint), ConnectionRefusedError)
        self.assertIn("refused", why)

    @inlineCallbacks
    def test_redis_pong(self) -> Any:
        """
        The redis probe sends PING and passes on +PONG.
        """
        endpoint, factory = self.canned(b"+PONG\r\n")
        yield codec_probe(endpoint, redis_codec)()
        self.assertEqual(factory.built[0].received, PING)

    @inlineCallbacks
    def test_redis_error(self) -> Any:
        """
        The redis probe fails on an error reply, quoting it.
        """
        endpoint, _ = self.canned(b"-ERR unknown command\r\n")
        why = yield self.assert_probe_fails(codec_probe(endpoint, redis_codec))
        self.assertEqual(why, "unexpected answer b'-ERR unknown command\\r\\n'")

    @inlineCallbacks
    def test_redis_garbage(self) -> Any:
        """
        The redis probe fails on bytes that are not RESP, as malformed.
        """
        endpoint, _ = self.canned(b"hello there\r\n")
        why = yield self.assert_probe_fails(codec_probe(endpoint, redis_codec))
        self.assertIn("malformed answer: unknown reply type", why)

    @inlineCallbacks
    def test_memcached_version(self) -> Any:
        """
        The memcached probe sends C{version} and passes on a VERSION line.
        """
        endpoint, factory = self.canned(b"VERSION 1.6\r\n")
        yield codec_probe(endpoint, memcached_codec)()
        self.assertEqual(factory.built[0].received, b"version\r\n")

    @inlineCallbacks
    def test_memcached_error(self) -> Any:
        """
        The memcached probe fails on an ERROR line.
        """
        endpoint, _ = self.canned(b"ERROR\r\n")
        why = yield self.assert_probe_fails(codec_probe(endpoint, memcached_codec))
        self.assertEqual(why, "unexpected answer b'ERROR\\r\\n'")

    @inlineCallbacks
    def test_backend_closes_without_answer(self) -> Any:
        """
        A backend that closes at once fails the probe: the connection closed
        before the answer.
        """
        class Closer(Protocol):
            def connectionMade(self) -> None:
                assert self.transport is not None
                self.transport.loseConnection()

        endpoint = self.serve(Factory.forProtocol(Closer))
        why = yield self.assert_probe_fails(codec_probe(endpoint, redis_codec))
        self.assertIn("connection closed before the answer", why)

    def web(self) -> TrackingEndpoint:
        class Broken(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                request.setResponseCode(500)
                return b"broken"

        class Ok(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                return b"ok"

        root = Resource()
        root.putChild(b"", Ok())
        root.putChild(b"broken", Broken())
        site = Site(root)
        site.noisy = False
        return self.serve(site)

    @inlineCallbacks
    def test_http_200(self) -> Any:
        """
        The HTTP probe passes on a twisted.web 200.
        """
        yield http_probe(self.web())()

    @inlineCallbacks
    def test_http_500(self) -> Any:
        """
        The HTTP probe fails on a 500 with "HTTP 500".
        """
        why = yield self.assert_probe_fails(http_probe(self.web(), b"/broken"))
        self.assertEqual(why, "HTTP 500")

    @inlineCallbacks
    def test_http_404(self) -> Any:
        """
        Any status outside 2xx fails: a missing health page is a 404.
        """
        why = yield self.assert_probe_fails(http_probe(self.web(), b"/nowhere"))
        self.assertEqual(why, "HTTP 404")

    @inlineCallbacks
    def test_silent_backend_times_out(self) -> Any:
        """
        Against a backend that accepts but never answers, a HealthCheck on
        the real reactor counts the probe as timed out after its 0.2 s
        timeout, aborts the connection, and stops cleanly.
        """
        endpoint, factory = self.canned(None)
        changed: "Deferred[Tuple[str, str, str]]" = Deferred()
        check = HealthCheck("silent", codec_probe(endpoint, redis_codec), interval=30.0,
                            timeout=0.2, rise=1, fall=1, clock=reactor,
                            on_change=lambda *change: changed.callback(change))
        self.addCleanup(check.stop)
        started = reactor.seconds()
        check.start()
        old, new, why = yield changed
        self.assertGreaterEqual(reactor.seconds() - started, 0.2)
        self.assertEqual((old, new), (UNKNOWN, UNHEALTHY))
        self.assertEqual(check.last_error, "probe timed out after 0.2s")
        self.assertIn("probe timed out after 0.2s", why)
        self.assertFalse(check.probing)
        self.assertEqual(factory.built[0].received, PING)
        yield wait_for(lambda: not endpoint.open, what="the probe's connection to close")
