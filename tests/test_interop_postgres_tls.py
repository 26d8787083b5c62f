"""
TLS in front of and behind poolproxy in postgres mode, with a real
PostgreSQL 15 (ssl = on, a certificate made by the test: tests/certs.py)
and real clients (psql, psycopg 3):

  - client side: psql and psycopg with sslmode=require and verify-full
    through the proxy's client_tls_cert_file; require mode refusing plain
    text; bytes after the SSLRequest refused; the certificate rotated by
    SIGHUP;
  - server side: backend_tls verified against the server's CA (pg_stat_ssl
    on the server shows the proxy's connections encrypted), with the TCP
    health checks on; a wrong CA and a server without TLS refused.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
from typing import Any, Dict, List, Tuple

from cryptography import x509
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from poolproxy.codecs import postgres as pg
from tests.certs import TestCA, serial
from tests.interop import (ProxyProcess, PostgresServer, module, pg_binary, postgres_server,
                           wait_until)


def server_certificate(testcase: Any, ca: TestCA) -> Tuple[str, str]:
    """
    A certificate for 127.0.0.1 and localhost that the PostgreSQL server
    can read: it runs as the postgres user, and takes a key only if it is
    the key's owner and the mode is 0600.

    @return: (cert_file, key_file)
    """
    cert, key = ca.issue("localhost", "127.0.0.1")
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    # mktemp's own directory (its parent) is private to us.
    for path in (os.path.dirname(directory), directory):
        os.chmod(path, 0o755)
    copies = []
    for path, mode in ((cert, 0o644), (key, 0o600)):
        copy = os.path.join(directory, os.path.basename(path))
        shutil.copyfile(path, copy)
        os.chmod(copy, mode)
        copies.append(copy)
    if os.geteuid() == 0:
        import pwd
        entry = pwd.getpwnam("postgres")
        for copy in copies:
            os.chown(copy, entry.pw_uid, entry.pw_gid)
    return copies[0], copies[1]


def tls_postgres(testcase: Any, ca: TestCA) -> PostgresServer:
    cert, key = server_certificate(testcase, ca)
    return postgres_server(testcase, settings={"ssl": "on", "ssl_cert_file": cert,
                                               "ssl_key_file": key})


def users_file(testcase: Any, server: PostgresServer) -> str:
    return server.userlist(os.path.abspath(testcase.mktemp()))


def proxy(testcase: Any, server: PostgresServer, *extra: str) -> ProxyProcess:
    return ProxyProcess(testcase, "postgres", [server.port], "--auth-file",
                        users_file(testcase, server), "--pool-size", "2",
                        "--mux-connections", "1", *extra)


def psql(server: PostgresServer, port: int, sql: str,
         **keywords: Any) -> "subprocess.CompletedProcess[str]":
    """psql as app on app through C{port}, with libpq keywords (sslmode...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = server.password("app")
    return subprocess.run([pg_binary("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                           "-d", server.dsn(user="app", database="app", port=port, **keywords),
                           "-c", sql], capture_output=True, text=True, env=env, timeout=60)


def encrypted_server_connections(server: PostgresServer, user: str = "app") -> Dict[bool, int]:
    """C{user}'s connections on the server, by whether pg_stat_ssl says they are under TLS."""
    rows = server.psql("SELECT s.ssl, count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a "
                       f"USING (pid) WHERE a.usename = '{user}' AND a.pid <> pg_backend_pid() "
                       "GROUP BY s.ssl", server.superuser, "postgres")
    out = {}
    for row in rows.splitlines():
        flag, count = row.split("|")
        out[flag == "t"] = int(count)
    return out


def ssl_request_serial(port: int, ca_file: str) -> Tuple[int, str]:
    """
    What the proxy serves after an SSLRequest: the certificate's serial
    number (verified for localhost) and the ALPN protocol it chose.
    """
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["postgresql"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(pg.ssl_request())
        assert raw.recv(1) == b"S"
        with context.wrap_socket(raw, server_hostname="localhost") as s:
            der = s.getpeercert(binary_form=True)
            alpn = s.selected_alpn_protocol() or ""
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number, alpn


def direct_tls_psycopg() -> Any:
    """psycopg, if its libpq speaks direct TLS (17 and later: the binary wheel's, not Debian 12's 15)."""
    psycopg = module("psycopg")
    if psycopg.pq.version() < 170000:
        raise SkipTest(f"psycopg's libpq {psycopg.pq.version()} has no sslnegotiation=direct "
                       "(libpq 17+); the raw direct TLS test still runs")
    return psycopg


def lines(pp: ProxyProcess, fragment: str) -> List[str]:
    with open(pp.process.log, errors="replace") as f:
        return [line for line in f if fragment in line]


class ClientTlsTests(SynchronousTestCase):
    """Clients to the proxy over TLS (client_tls_cert_file); the proxy to a plain server."""

    def setUp(self) -> None:
        self.ca = TestCA(self)
        self.cert, self.key = self.ca.issue("localhost", "127.0.0.1")
        self.server = postgres_server(self)

    def start(self, *extra: str) -> ProxyProcess:
        return proxy(self, self.server, "--client-tls-cert-file", self.cert,
                     "--client-tls-key-file", self.key, *extra)

    def test_psql_sslmode_require_and_verify_full(self) -> None:
        """
        psql with sslmode=require, then verify-full against the test's CA
        (for localhost and for 127.0.0.1): queries over TLS, and \\conninfo
        says so.
        """
        pp = self.start()
        run = psql(self.server, pp.port, "select 40 + 2", sslmode="require")
        self.assertEqual((run.returncode, run.stdout.strip()), (0, "42"), run.stderr + pp.log())
        for host in ("localhost", "127.0.0.1"):
            run = psql(self.server, pp.port, "\\conninfo", sslmode="verify-full",
                       sslrootcert=self.ca.ca_file, host=host)
            self.assertEqual(run.returncode, 0, run.stderr + pp.log())
            self.assertIn("SSL connection (protocol: TLSv1.3", run.stdout)

    def test_verify_full_refuses_another_ca(self) -> None:
        """A client trusting another CA refuses the proxy's certificate (nothing is sent)."""
        pp = self.start()
        other = TestCA(self, "another CA")
        run = psql(self.server, pp.port, "select 1", sslmode="verify-full",
                   sslrootcert=other.ca_file, host="localhost")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("certificate verify failed", run.stderr)

    def test_psycopg_verify_full(self) -> None:
        """
        psycopg 3 (libpq 18, which offers ALPN postgresql) with verify-full:
        TLS in use, transactions pooled as without it.
        """
        psycopg = module("psycopg")
        pp = self.start()
        dsn = self.server.dsn(user="app", database="app", port=pp.port, host="localhost",
                              sslmode="verify-full", sslrootcert=self.ca.ca_file)
        with psycopg.connect(dsn, autocommit=True) as conn:
            self.assertTrue(conn.pgconn.ssl_in_use)
            with conn.transaction():
                conn.execute("create table t (n int)")
                conn.execute("insert into t select generate_series(1, 1000)")
            self.assertEqual(conn.execute("select sum(n) from t").fetchone(), (500500,))
            big = "x" * (4 * 1024 * 1024)
            self.assertEqual(conn.execute("select length(%s)", (big,)).fetchone(), (len(big),))

    def test_psycopg_direct_tls(self) -> None:
        """
        PostgreSQL 17's direct TLS (psycopg 3's libpq 18, sslnegotiation=direct):
        the handshake from the first byte, no SSLRequest, ALPN postgresql;
        queries served, TLS in use, in require mode too.
        """
        psycopg = direct_tls_psycopg()
        pp = self.start("--client-tls-mode", "require")
        dsn = self.server.dsn(user="app", database="app", port=pp.port, host="localhost",
                              sslmode="verify-full", sslrootcert=self.ca.ca_file,
                              sslnegotiation="direct")
        with psycopg.connect(dsn, autocommit=True) as conn:
            self.assertTrue(conn.pgconn.ssl_in_use)
            self.assertEqual(conn.execute("select 40 + 2").fetchone(), (42,))
        self.assertEqual(lines(pp, "refused"), [])

    def test_direct_tls_without_alpn_refused(self) -> None:
        """
        Direct TLS whose client offers no ALPN postgresql: FATAL 08P01 under
        TLS, as PostgreSQL 17 says it, and counted (against cross-protocol
        attacks: an HTTPS client sent here cannot start a session).
        """
        pp = self.start()
        context = ssl.create_default_context(cafile=self.ca.ca_file)
        with socket.create_connection(("127.0.0.1", pp.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(pg.startup_message({b"user": b"app", b"database": b"app"}))
                reader, got = pg.MessageReader(), []
                while not got:
                    got = reader.feed(s.recv(4096))
        [(kind, body)] = got
        fields = pg.error_fields(body)
        self.assertEqual((kind, fields["C"]), (b"E", "08P01"))
        self.assertIn("without ALPN", fields["M"])
        wait_until(lambda: pp.metric("poolproxy_client_connections_refused_total",
                                     reason="direct_tls_without_alpn") == 1,
                   pp.process.proc, "the refusal counted", log=pp.process.log)

    def test_direct_tls_without_certificate(self) -> None:
        """No client_tls certificate: a direct TLS handshake is closed at once, counted."""
        pp = proxy(self, self.server)
        context = ssl.create_default_context(cafile=self.ca.ca_file)
        context.set_alpn_protocols(["postgresql"])
        with socket.create_connection(("127.0.0.1", pp.port), timeout=10) as raw:
            with self.assertRaises((ssl.SSLError, ConnectionError)):
                context.wrap_socket(raw, server_hostname="localhost")
        wait_until(lambda: pp.metric("poolproxy_client_connections_refused_total",
                                     reason="direct_tls_unavailable") == 1,
                   pp.process.proc, "the refusal counted", log=pp.process.log)

    def test_plain_text_still_served_in_allow_mode(self) -> None:
        pp = self.start()
        run = psql(self.server, pp.port, "select 1", sslmode="disable")
        self.assertEqual((run.returncode, run.stdout.strip()), (0, "1"), run.stderr)

    def test_require_refuses_plain_text(self) -> None:
        """client_tls_mode = require: sslmode=disable gets FATAL SSL required; TLS works."""
        pp = self.start("--client-tls-mode", "require")
        run = psql(self.server, pp.port, "select 1", sslmode="disable")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("SSL required", run.stderr)
        run = psql(self.server, pp.port, "select 1", sslmode="require")
        self.assertEqual((run.returncode, run.stdout.strip()), (0, "1"), run.stderr)
        wait_until(lambda: pp.metric("poolproxy_client_connections_refused_total",
                                     reason="tls_required") == 1,
                   pp.process.proc, "the refusal counted", log=pp.process.log)

    def test_bytes_after_ssl_request_refused(self) -> None:
        """
        A StartupMessage sent with the SSLRequest, before the answer: FATAL
        08P01, no S, the connection closed; counted.
        """
        pp = self.start()
        with socket.create_connection(("127.0.0.1", pp.port), timeout=10) as s:
            s.sendall(pg.ssl_request() + pg.startup_message({b"user": b"app",
                                                             b"database": b"app"}))
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        [(kind, body)] = pg.MessageReader().feed(data)
        fields = pg.error_fields(body)
        self.assertEqual((kind, fields["C"], fields["M"]),
                         (b"E", "08P01", "received unencrypted data after SSL request"))
        wait_until(lambda: pp.metric("poolproxy_client_connections_refused_total",
                                     reason="unencrypted_after_request") == 1,
                   pp.process.proc, "the refusal counted", log=pp.process.log)

    def test_certificate_rotation_by_sighup(self) -> None:
        """
        The certificate and key replaced on disk, then SIGHUP: the next
        SSLRequest is served the new one; ALPN postgresql is chosen.
        """
        pp = self.start()
        self.assertEqual(ssl_request_serial(pp.port, self.ca.ca_file),
                         (serial(self.cert), "postgresql"))
        self.ca.issue("localhost", "127.0.0.1", cert_file=self.cert, key_file=self.key)
        done = len(lines(pp, "reload: done"))
        pp.process.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(lines(pp, "reload: done")) > done, pp.process.proc,
                   "the reload", log=pp.process.log)
        self.assertEqual(ssl_request_serial(pp.port, self.ca.ca_file)[0], serial(self.cert))
        changed = lines(pp, "serving certificate")
        self.assertEqual(len(changed), 1, changed)
        self.assertIn("--client-tls-cert-file: serving certificate", changed[0])


class ServerTlsTests(SynchronousTestCase):
    """The proxy to a PostgreSQL server with ssl = on, through backend_tls."""

    def setUp(self) -> None:
        self.ca = TestCA(self)
        self.server = tls_postgres(self, self.ca)

    def test_verified_tls_to_the_server(self) -> None:
        """
        backend_tls with the server's CA (its certificate holds 127.0.0.1,
        the backend's address): queries through the proxy, and pg_stat_ssl
        on the server shows every connection of the proxy under TLS.  The
        health checks (a TCP connect) keep the backend up meanwhile.
        """
        psycopg = module("psycopg")
        pp = proxy(self, self.server, "--backend-tls", f"ca_file={self.ca.ca_file}",
                   "--check-interval", "0.2")
        dsn = self.server.dsn(user="app", database="app", port=pp.port, sslmode="disable")
        conns = [psycopg.connect(dsn, autocommit=True) for _ in range(2)]
        try:
            # Two transactions at once: two server connections.
            with conns[0].transaction(), conns[1].transaction():
                for conn in conns:
                    self.assertEqual(conn.execute("select current_user").fetchone(), ("app",))
                self.assertEqual(encrypted_server_connections(self.server), {True: 2})
        finally:
            for conn in conns:
                conn.close()
        wait_until(lambda: pp.metric("poolproxy_backend_health_checks_total", result="ok") >= 3,
                   pp.process.proc, "three health checks", log=pp.process.log)
        self.assertEqual(pp.metric("poolproxy_backend_up"), 1)
        with psycopg.connect(dsn) as conn:
            self.assertEqual(conn.execute("select 1").fetchone(), (1,))
        self.assertEqual(lines(pp, "is down"), [])

    def test_checks_log_in_under_tls(self) -> None:
        """
        A server that takes TCP logins over TLS only (hostssl): the login
        health checks (auth_user) ask for TLS as the pool's connections do,
        so the backend stays healthy and every connection of the proxy,
        the checks' included, is encrypted.  Before, the checks logged in
        in plain text, were refused, and took the backend out.
        """
        with open(os.path.join(self.server.data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\n"
                    "hostssl all all 127.0.0.1/32 scram-sha-256\n")
        self.server.psql("select pg_reload_conf()")
        users = os.path.abspath(self.mktemp())
        with open(users, "w") as f:
            f.write(f'"app" "{self.server.password("app")}"\n')
        pp = ProxyProcess(self, "postgres", [self.server.port], "--auth-file", users,
                          "--pool-size", "2", "--mux-connections", "1",
                          "--backend-tls", f"ca_file={self.ca.ca_file}",
                          "--auth-user", "app", "--check-interval", "0.2", "--check-fall", "1")
        wait_until(lambda: pp.metric("poolproxy_backend_health_checks_total", result="ok") >= 3,
                   pp.process.proc, "three health checks", log=pp.process.log)
        self.assertEqual(pp.metric("poolproxy_backend_health_state", state="healthy"), 1)
        run = psql(self.server, pp.port, "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
                   sslmode="disable")
        self.assertEqual((run.returncode, run.stdout.strip()), (0, "t"), run.stderr + pp.log())
        self.assertEqual(lines(pp, "login failed"), [])
        self.assertEqual(lines(pp, "is down"), [])

    def test_tls_both_sides(self) -> None:
        """psql with verify-full to the proxy, the proxy with verified TLS to the server."""
        cert, key = self.ca.issue("localhost", "127.0.0.1")
        pp = proxy(self, self.server, "--backend-tls", f"ca_file={self.ca.ca_file}",
                   "--client-tls-cert-file", cert, "--client-tls-key-file", key,
                   "--client-tls-mode", "require")
        run = psql(self.server, pp.port,
                   "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
                   sslmode="verify-full", sslrootcert=self.ca.ca_file, host="localhost")
        self.assertEqual((run.returncode, run.stdout.strip()), (0, "t"), run.stderr + pp.log())

    def test_wrong_ca_refused(self) -> None:
        """
        backend_tls trusting another CA: no login, the client gets the
        reason (certificate verify failed), the log says why once.
        """
        psycopg = module("psycopg")
        other = TestCA(self, "another CA")
        pp = proxy(self, self.server, "--backend-tls", f"ca_file={other.ca_file}")
        with self.assertRaises(psycopg.OperationalError) as caught:
            psycopg.connect(self.server.dsn(user="app", database="app", port=pp.port,
                                            sslmode="disable"))
        self.assertIn("TLS handshake failed: certificate verify failed", str(caught.exception))
        self.assertEqual(encrypted_server_connections(self.server), {})
        down = lines(pp, "is down: TLS handshake failed")
        self.assertEqual(len(down), 1, pp.log())

    def test_server_without_tls_refused(self) -> None:
        """
        backend_tls to a server with ssl = off: it answers N, and the proxy
        does not go on in plain text.
        """
        psycopg = module("psycopg")
        plain = postgres_server(self)
        pp = proxy(self, plain, "--backend-tls", f"ca_file={self.ca.ca_file}")
        with self.assertRaises(psycopg.OperationalError) as caught:
            psycopg.connect(plain.dsn(user="app", database="app", port=pp.port,
                                      sslmode="disable"))
        self.assertIn("the server does not accept TLS", str(caught.exception))
        self.assertEqual(plain.backend_connections(user="app"), 0)
