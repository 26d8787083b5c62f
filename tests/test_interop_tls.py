"""
TLS through a real poolproxy process, with certificates made by the test
(tests/certs.py): ssl: listeners served to real TLS clients (curl, redis-py);
TLS to real servers (redis-server built with TLS, nginx with ssl), verified,
mutual, and refused when the certificate or its name is wrong.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from typing import Any, List, Sequence

from twisted.trial.unittest import SynchronousTestCase

from tests.certs import TestCA, serial, served_serial
from tests.interop import (
    Process,
    ProxyProcess,
    binary,
    module,
    nginx_server,
    redis_server,
    wait_port,
    wait_until,
)
from tests.support import free_port


def ssl_listener(cert_file: str, key_file: str) -> str:
    """An ssl: listener description on 127.0.0.1, {port} left for ProxyProcess."""
    return f"ssl:{{port}}:interface=127.0.0.1:privateKey={key_file}:certKey={cert_file}"


class TlsListenerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = TestCA(self)
        self.cert, self.key = self.ca.issue("localhost", "127.0.0.1")

    def test_curl_over_https(self) -> None:
        """
        curl, trusting only the test's CA, gets nginx's answers through an
        ssl: listener in http mode: several requests on one connection, and
        a 1 MiB body.
        """
        curl = binary("curl")
        backend, directory = nginx_server(self)
        pp = ProxyProcess(self, "http", [backend], listen=ssl_listener(self.cert, self.key))
        base = f"https://localhost:{pp.port}"
        result = subprocess.run([curl, "-sS", "--fail", "--cacert", self.ca.ca_file,
                                 f"{base}/a", f"{base}/b"],
                                capture_output=True, timeout=60)
        self.assertEqual((result.returncode, result.stderr), (0, b""), pp.log())
        self.assertEqual(result.stdout, b"nginx says /a\nnginx says /b\n")
        result = subprocess.run([curl, "-sS", "--fail", "--cacert", self.ca.ca_file,
                                 f"{base}/big"], capture_output=True, timeout=60)
        with open(os.path.join(directory, "big"), "rb") as f:
            self.assertEqual(result.stdout, f.read(), result.stderr)

    def test_redis_py_with_ssl(self) -> None:
        """
        redis-py with ssl=True, trusting only the test's CA, talks to a
        plain redis-server through an ssl: listener in redis mode: commands,
        a pipeline, a 5 MB value both ways.
        """
        redis = module("redis")
        backend = redis_server(self)
        pp = ProxyProcess(self, "redis", [backend], listen=ssl_listener(self.cert, self.key))
        r = redis.Redis(host="localhost", port=pp.port, ssl=True, ssl_ca_certs=self.ca.ca_file,
                        socket_timeout=30)
        self.addCleanup(r.close)
        self.assertTrue(r.ping())
        r.set("k", "v")
        self.assertEqual(r.get("k"), b"v")
        pipe = r.pipeline(transaction=False)
        for i in range(100):
            pipe.incr("n")
        self.assertEqual(pipe.execute(), list(range(1, 101)))
        blob = os.urandom(5 * 1024 * 1024)
        r.set("blob", blob)
        self.assertEqual(r.get("blob"), blob)

    def test_refused_at_a_connection_limit(self) -> None:
        """
        A connection over max_connections_per_source is closed before any
        TLS, as on a tcp listener, and counted; the proxy and the client
        already connected go on (Twisted's TLS factory would have wrapped
        the refusal and failed).
        """
        redis = module("redis")
        backend = redis_server(self)
        pp = ProxyProcess(self, "redis", [backend], "--max-connections-per-source", "1",
                          listen=ssl_listener(self.cert, self.key))
        # The port probe that waited for the listener is one connection from
        # this source: gone before the first client, or that one is refused.
        wait_until(lambda: pp.metric("poolproxy_client_connections_open") == 0,
                   pp.process.proc, "the port probe gone", log=pp.process.log)
        first = redis.Redis(host="localhost", port=pp.port, ssl=True, ssl_ca_certs=self.ca.ca_file,
                            single_connection_client=True, socket_timeout=30)
        self.addCleanup(first.close)
        self.assertTrue(first.ping())
        before = pp.metric("poolproxy_client_connections_refused_total", reason="per_source")
        context = ssl.create_default_context(cafile=self.ca.ca_file)
        with socket.create_connection(("127.0.0.1", pp.port), timeout=10) as raw:
            with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
                with context.wrap_socket(raw, server_hostname="localhost") as second:
                    second.recv(1)  # TLS 1.3: a refusal may show at the first read
        self.assertTrue(first.ping())
        wait_until(lambda: pp.metric("poolproxy_client_connections_refused_total",
                                     reason="per_source") == before + 1,
                   pp.process.proc, "the refusal counted", log=pp.process.log)
        self.assertNotIn("Traceback", pp.log())


def tls_redis(testcase: Any, cert_file: str, key_file: str, ca_file: str,
              auth_clients: bool = False, extra: Sequence[str] = ()) -> int:
    """A redis-server that speaks only TLS, on a free port (returned)."""
    port = free_port()
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    args = [binary("redis-server"), "--port", "0", "--tls-port", str(port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory,
            "--tls-cert-file", cert_file, "--tls-key-file", key_file,
            "--tls-ca-cert-file", ca_file,
            "--tls-auth-clients", "yes" if auth_clients else "no", *extra]
    p = Process(testcase, args, "redis-tls")
    wait_port(port, p.proc, log=p.log)
    return port


TLS_NGINX_CONF = """
{user}
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "nginx over TLS says $request_uri ($ssl_protocol)\\n"; }}
    }}
}}
"""


def tls_nginx(testcase: Any, cert_file: str, key_file: str) -> int:
    """nginx serving https on a free port (returned)."""
    port, _ = nginx_server(testcase, TLS_NGINX_CONF, "nginx-tls", cert=cert_file, key=key_file)
    return port


def lines(pp: ProxyProcess, fragment: str) -> List[str]:
    """The lines of the proxy's log that hold C{fragment}."""
    with open(pp.process.log, errors="replace") as f:
        return [line for line in f if fragment in line]


class BackendTlsTests(SynchronousTestCase):
    """TLS from the proxy to real TLS servers: verified, mutual, refused."""

    def setUp(self) -> None:
        self.redis = module("redis")
        self.ca = TestCA(self)
        # Backends are addressed as 127.0.0.1: the name their certificate holds.
        self.cert, self.key = self.ca.issue("localhost", "127.0.0.1")

    def client(self, pp: ProxyProcess, **kwargs: Any) -> Any:
        r = self.redis.Redis(host="127.0.0.1", port=pp.port, socket_timeout=30, **kwargs)
        self.addCleanup(r.close)
        return r

    def test_redis_over_tls_with_health_checks(self) -> None:
        """
        redis mode to a redis-server that speaks only TLS: requests and a
        5 MB value go through, health checks PING over the same TLS and
        pass, every connect is ok.
        """
        backend = tls_redis(self, self.cert, self.key, self.ca.ca_file)
        pp = ProxyProcess(self, "redis", [backend], "--backend-tls", f"ca_file={self.ca.ca_file}",
                          "--check-interval", "0.2")
        r = self.client(pp)
        self.assertTrue(r.ping())
        blob = os.urandom(5 * 1024 * 1024)
        r.set("blob", blob)
        self.assertEqual(r.get("blob"), blob)
        wait_until(lambda: pp.metric("poolproxy_backend_health_checks_total", result="ok") >= 2,
                   pp.process.proc, "health checks over TLS", log=pp.process.log)
        self.assertEqual(pp.metric("poolproxy_backend_health_checks_total", result="failed"), 0)
        self.assertGreater(pp.metric("poolproxy_pool_connects_total", result="ok"), 0)
        self.assertEqual(pp.metric("poolproxy_pool_connects_total", result="tls_error"), 0)

    def test_redis_mutual_tls(self) -> None:
        """
        A redis-server that requires client certificates serves the proxy
        that presents one ([backend_tls] in the TOML file, cert_file and
        key_file); one that presents none gets no answer from it.
        """
        backend = tls_redis(self, self.cert, self.key, self.ca.ca_file, auth_clients=True)
        client_cert, client_key = self.ca.issue("poolproxy.client")
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(f'[backend_tls]\nca_file = "{self.ca.ca_file}"\n'
                    f'cert_file = "{client_cert}"\nkey_file = "{client_key}"\n')
        pp = ProxyProcess(self, "redis", [backend], "--config", config)
        r = self.client(pp)
        r.set("k", "mutual")
        self.assertEqual(r.get("k"), b"mutual")

        without = ProxyProcess(self, "redis", [backend], "--backend-tls",
                               f"ca_file={self.ca.ca_file}")
        r = self.client(without)
        with self.assertRaises(self.redis.exceptions.ResponseError) as raised:
            r.get("k")
        # TLS 1.3: the server checks the client's certificate after the
        # client's handshake is done, so its refusal ends the connection
        # ("tlsv13 alert certificate required", or with Twisted before 26
        # "backend connection lost").
        self.assertIn("poolproxy: backend unavailable", str(raised.exception))

    def test_nginx_over_tls(self) -> None:
        """
        http mode to nginx with ssl: requests go through over TLS (nginx
        says which protocol), and the health check's GET is answered.
        """
        backend = tls_nginx(self, self.cert, self.key)
        pp = ProxyProcess(self, "http", [backend], "--backend-tls", f"ca_file={self.ca.ca_file}",
                          "--check-interval", "0.2")
        for path in ("/a", "/b"):
            with urllib.request.urlopen(f"http://127.0.0.1:{pp.port}{path}", timeout=30) as reply:
                self.assertRegex(reply.read(), rb"^nginx over TLS says " + path.encode()
                                 + rb" \(TLSv1\.[23]\)\n$")
        wait_until(lambda: pp.metric("poolproxy_backend_health_checks_total", result="ok") >= 2,
                   pp.process.proc, "health checks over TLS", log=pp.process.log)

    def test_untrusted_certificate_refused(self) -> None:
        """
        A backend whose certificate another CA signed is refused: clients
        get the protocol's error, each attempt is a tls_error, and the log
        says why once, not once per client.
        """
        other = TestCA(self, "another CA")
        cert, key = other.issue("localhost", "127.0.0.1")
        backend = tls_redis(self, cert, key, other.ca_file)
        pp = ProxyProcess(self, "redis", [backend], "--backend-tls", f"ca_file={self.ca.ca_file}")
        for _ in range(10):
            r = self.client(pp)
            with self.assertRaises(self.redis.exceptions.ResponseError) as raised:
                r.get("k")
            self.assertIn("certificate verify failed", str(raised.exception))
        self.assertGreaterEqual(pp.metric("poolproxy_pool_connects_total", result="tls_error"), 1)
        self.assertEqual(pp.metric("poolproxy_pool_connects_total", result="ok"), 0)
        logged = lines(pp, "TLS handshake failed")
        self.assertEqual(len(logged), 1, logged)
        self.assertIn("is down: TLS handshake failed: certificate verify failed", logged[0])

    def test_wrong_host_name_refused(self) -> None:
        """
        A trusted certificate that is not for the server name asked (here
        server_name) is refused: HTTP clients get 502, the connect counts as
        a tls_error, the log names the name.
        """
        backend = tls_nginx(self, self.cert, self.key)
        pp = ProxyProcess(self, "http", [backend], "--backend-tls",
                          f"ca_file={self.ca.ca_file},server_name=wrong.example")
        with self.assertRaises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"http://127.0.0.1:{pp.port}/", timeout=30)
        self.assertEqual(raised.exception.code, 502)
        self.assertGreaterEqual(pp.metric("poolproxy_pool_connects_total", result="tls_error"), 1)
        logged = lines(pp, "TLS handshake failed")
        self.assertEqual(len(logged), 1, logged)
        self.assertIn("the certificate does not match wrong.example", logged[0])

    def test_plain_backend_refused(self) -> None:
        """
        A backend that does not speak TLS (plain nginx answers the
        ClientHello with a plain-text 400) fails the handshake: 502, a
        tls_error.  (A plain redis-server waits for the end of an inline
        command that never comes: that is a connect timeout.)
        """
        backend, _ = nginx_server(self)
        pp = ProxyProcess(self, "http", [backend], "--backend-tls", f"ca_file={self.ca.ca_file}")
        with self.assertRaises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"http://127.0.0.1:{pp.port}/", timeout=30)
        self.assertEqual(raised.exception.code, 502)
        self.assertGreaterEqual(pp.metric("poolproxy_pool_connects_total", result="tls_error"), 1)

    def test_verify_false(self) -> None:
        """verify=false connects to a certificate nobody trusts, and says so at startup."""
        other = TestCA(self, "another CA")
        cert, key = other.issue("localhost", "127.0.0.1")
        backend = tls_redis(self, cert, key, other.ca_file)
        pp = ProxyProcess(self, "redis", [backend], "--backend-tls", "verify=false")
        self.assertTrue(self.client(pp).ping())
        self.assertEqual(len(lines(pp, "checks no certificate and no name")), 1)


class SighupTests(SynchronousTestCase):
    """SIGHUP to a real twistd: certificates, passwords and tokens re-read from their files."""

    def setUp(self) -> None:
        self.redis = module("redis")
        self.ca = TestCA(self)

    def sighup(self, pp: ProxyProcess, outcome: str = "reload: done") -> None:
        """Send SIGHUP and wait for the reload's last line."""
        done = len(lines(pp, outcome))
        pp.process.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(lines(pp, outcome)) > done, pp.process.proc,
                   "the reload", log=pp.process.log)

    def test_listener_certificate_rotation(self) -> None:
        """
        The listener's certificate and key replaced on disk, then SIGHUP: a
        new connection is served the new certificate, a connection made
        before goes on with the old one; one log line says what changed;
        files that then do not load keep the certificate in use.
        """
        cert, key = self.ca.issue("localhost")
        pp = ProxyProcess(self, "redis", [redis_server(self)], listen=ssl_listener(cert, key))
        self.assertEqual(served_serial(pp.port, self.ca.ca_file), serial(cert))
        before = self.redis.Redis(host="localhost", port=pp.port, ssl=True,
                                  ssl_ca_certs=self.ca.ca_file, single_connection_client=True,
                                  socket_timeout=30)
        self.addCleanup(before.close)
        before.set("k", "1")
        old = serial(cert)

        self.ca.issue("localhost", cert_file=cert, key_file=key)
        self.assertNotEqual(serial(cert), old)
        self.sighup(pp)
        self.assertEqual(served_serial(pp.port, self.ca.ca_file), serial(cert))
        self.assertEqual(before.incr("k"), 2)  # the old connection goes on
        changed = lines(pp, "serving certificate")
        self.assertEqual(len(changed), 1, changed)
        self.assertIn(f"serial {serial(cert):x}", changed[0])
        self.assertIn("(was O=", changed[0])

        with open(key, "w") as f:
            f.write("not a key\n")
        self.sighup(pp, "reload: the new configuration is broken")
        kept = lines(pp, "keeping the running one")
        self.assertEqual(len(kept), 1, pp.log())
        self.assertIn("cannot load its certificate and key", kept[0])
        self.assertEqual(served_serial(pp.port, self.ca.ca_file), serial(cert))

    def test_client_password_rotation(self) -> None:
        """
        client_password_file rewritten, then SIGHUP: new connections must
        AUTH with the new password and the old one is refused; one log line
        says the file changed, without the password; a file that is then
        broken (empty) keeps the new password in use, with a line saying why.
        """
        password = os.path.abspath(self.mktemp())
        with open(password, "w") as f:
            f.write("old-secret\n")
        pp = ProxyProcess(self, "redis", [redis_server(self)], "--client-password-file", password)

        def auth(secret: str) -> bool:
            r = self.redis.Redis(host="127.0.0.1", port=pp.port, password=secret,
                                 socket_timeout=30)
            try:
                return bool(r.ping())
            except self.redis.exceptions.AuthenticationError:
                return False
            finally:
                r.close()

        self.assertTrue(auth("old-secret"))
        with open(password, "w") as f:
            f.write("new-secret\n")
        self.sighup(pp)
        self.assertTrue(auth("new-secret"))
        self.assertFalse(auth("old-secret"))
        changed = lines(pp, "--client-password-file")
        self.assertEqual(len(changed), 1, changed)
        self.assertIn(f"a new secret from {password} is in use", changed[0])

        # As nginx and HAProxy do, a reload that meets a file it cannot use
        # is refused whole: everything in use is kept, the line says why.
        with open(password, "w") as f:
            f.write("\n")
        self.sighup(pp, "reload: the new configuration is broken")
        kept = lines(pp, "keeping the running one")
        self.assertEqual(len(kept), 1, pp.log())
        self.assertIn(f"{password} holds no password on its first line", kept[0])
        self.assertTrue(auth("new-secret"))
        self.assertEqual(lines(pp, "old-secret") + lines(pp, "new-secret"), [])

    def test_backend_password_rotation(self) -> None:
        """
        The backend's password changed on redis and in backend_password_file,
        then SIGHUP: connections the proxy makes after it AUTH with the new one.
        """
        backend = redis_server(self, password="old-secret")
        password = os.path.abspath(self.mktemp())
        with open(password, "w") as f:
            f.write("old-secret\n")
        pp = ProxyProcess(self, "redis", [backend], "--backend-password-file", password)
        r = self.redis.Redis(host="127.0.0.1", port=pp.port, socket_timeout=30)
        self.addCleanup(r.close)
        r.set("k", "v")

        direct = self.redis.Redis(host="127.0.0.1", port=backend, password="old-secret")
        self.addCleanup(direct.close)
        direct.config_set("requirepass", "new-secret")
        with open(password, "w") as f:
            f.write("new-secret\n")
        self.sighup(pp)
        # The proxy's connections, authenticated with the old password, are
        # killed: the ones it makes next must use the new one.
        direct.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

        def works() -> bool:
            try:
                return r.get("k") == b"v"
            except self.redis.exceptions.ResponseError:
                return False  # a request that met the killed connection

        wait_until(works, pp.process.proc, "a request on a new backend connection",
                   log=pp.process.log)
        self.assertEqual(len(lines(pp, f"a new secret from {password} is in use")), 1)

    def test_admin_token_rotation(self) -> None:
        """admin_token_file rewritten, then SIGHUP: the new token is accepted, the old refused."""
        token = os.path.abspath(self.mktemp())
        with open(token, "w") as f:
            f.write("old-token\n")
        backend = redis_server(self)
        pp = ProxyProcess(self, "redis", [backend], "--admin-token-file", token)

        def enable(secret: str) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{pp.metrics_port}/admin/backends/default/127.0.0.1:{backend}"
                "/enable", method="POST", headers={"Authorization": f"Bearer {secret}"})
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    return reply.status
            except urllib.error.HTTPError as e:
                return e.code

        self.assertEqual(enable("old-token"), 200)
        with open(token, "w") as f:
            f.write("new-token\n")
        self.sighup(pp)
        self.assertEqual(enable("new-token"), 200)
        self.assertEqual(enable("old-token"), 401)
