"""
TLS in the configuration: the backend_tls setting (a TOML table, per cluster
too, or the --backend-tls flag), the files it names checked before anything
listens, ssl: and tls: backend strings refused, ssl: listeners whose
certificate does not load refused.
"""

from __future__ import annotations

import os
import re
from typing import List

from poolproxy.config import BackendTLS
from tests.certs import TestCA
from tests.support import ROOT
from tests.test_config import BASE, ConfigTestCase, parse
from tests.test_config_clusters import cluster_file


class BackendTLSTests(ConfigTestCase):
    def setUp(self) -> None:
        self.ca = TestCA(self)
        self.cert, self.key = self.ca.issue("client.example")

    def file(self, body: str, *argv: str) -> BackendTLS:
        config = parse(["--config", self.write_toml(body)] + list(argv or BASE))
        return config.backend_tls

    def test_off_by_default(self) -> None:
        """Without the setting, backends are plain TCP."""
        self.assertIsNone(parse(BASE).backend_tls)

    def test_table(self) -> None:
        """A [backend_tls] table with every key; verification stays on."""
        tls = self.file(f'[backend_tls]\nca_file = "{self.ca.ca_file}"\n'
                        f'server_name = "redis.internal"\ncert_file = "{self.cert}"\n'
                        f'key_file = "{self.key}"\n')
        self.assertEqual(tls, BackendTLS(self.ca.ca_file, "redis.internal", self.cert, self.key,
                                         verify=True))

    def test_empty_table_and_true(self) -> None:
        """An empty table, or true: TLS with the system's CAs and each backend's host."""
        self.assertEqual(self.file("[backend_tls]\n"), BackendTLS())
        self.assertEqual(self.file("backend_tls = true\n"), BackendTLS())
        self.assertIsNone(self.file("backend_tls = false\n"))

    def test_verify_false_only_when_written(self) -> None:
        """verify = false turns checking off; only a TOML boolean will do."""
        self.assertFalse(self.file("[backend_tls]\nverify = false\n").verify)
        self.assertTrue(self.file("[backend_tls]\nverify = true\n").verify)
        for value in ('"false"', '"no"', "0"):
            self.assertFileError(f"[backend_tls]\nverify = {value}\n", "backend_tls",
                                 "verify: expected true or false")

    def assertFileError(self, toml: str, key: str, *fragments: str,
                        argv: "List[str] | None" = None) -> str:
        path = self.write_toml(toml)
        return self.assertConfigError(["--config", path] + (BASE if argv is None else argv),
                                      f"{key} (in {path})", *fragments)

    def test_unknown_key(self) -> None:
        """A key the table does not have is named, with the known ones."""
        self.assertFileError('[backend_tls]\nca_flie = "x"\n', "backend_tls",
                             "unknown key 'ca_flie'",
                             "known keys are ca_file, server_name, cert_file, key_file, verify")

    def test_wrong_types(self) -> None:
        """A path must be a non-empty string; the setting a table or a boolean."""
        self.assertFileError("[backend_tls]\nca_file = 3\n", "backend_tls",
                             "ca_file: expected a non-empty string, got 3")
        self.assertFileError('[backend_tls]\nserver_name = ""\n', "backend_tls",
                             "server_name: expected a non-empty string")
        self.assertFileError('backend_tls = "yes"\n', "backend_tls", "expected a table")

    def test_key_without_certificate(self) -> None:
        """key_file alone is a mistake: the certificate it goes with is missing."""
        self.assertFileError(f'[backend_tls]\nkey_file = "{self.key}"\n', "backend_tls",
                             "key_file without cert_file")

    def test_bad_paths(self) -> None:
        """A file that does not read is named, with the key and why, before anything starts."""
        missing = os.path.abspath(self.mktemp())
        for key in ("ca_file", "cert_file"):
            self.assertFileError(f'[backend_tls]\n{key} = "{missing}"\n', "backend_tls",
                                 f"{key}: cannot read {missing}: No such file or directory")
        self.assertFileError(f'[backend_tls]\ncert_file = "{self.cert}"\nkey_file = "{missing}"\n',
                             "backend_tls", f"key_file: cannot read {missing}")

    def test_files_that_hold_the_wrong_thing(self) -> None:
        """A CA file without a certificate, a key that is not the certificate's: refused."""
        self.assertFileError(f'[backend_tls]\nca_file = "{self.key}"\n', "backend_tls",
                             f"ca_file {self.key} holds no PEM certificate")
        _, other_key = self.ca.issue("other.example")
        self.assertFileError(f'[backend_tls]\ncert_file = "{self.cert}"\nkey_file = "{other_key}"\n',
                             "backend_tls", f"cert_file {self.cert} with key_file {other_key}")
        self.assertFileError(f'[backend_tls]\ncert_file = "{self.ca.ca_file}"\n', "backend_tls",
                             "key_file", "no private key")

    def test_key_in_the_certificate_file(self) -> None:
        """Without key_file the key is read from cert_file."""
        both = os.path.abspath(self.mktemp())
        with open(both, "wb") as f:
            for path in (self.cert, self.key):
                with open(path, "rb") as part:
                    f.write(part.read())
        self.assertEqual(self.file(f'[backend_tls]\ncert_file = "{both}"\n').cert_file, both)

    def test_flag(self) -> None:
        """--backend-tls: on, off, or comma-separated KEY=VALUE, over the file's table."""
        self.assertEqual(parse(BASE + ["--backend-tls", "on"]).backend_tls, BackendTLS())
        self.assertEqual(
            parse(BASE + ["--backend-tls", f"ca_file={self.ca.ca_file},server_name=r.internal"]
                  ).backend_tls, BackendTLS(ca_file=self.ca.ca_file, server_name="r.internal"))
        self.assertFalse(parse(BASE + ["--backend-tls", "verify=false"]).backend_tls.verify)
        self.assertIsNone(self.file("[backend_tls]\n", *BASE, "--backend-tls", "off"))
        self.assertConfigError(BASE + ["--backend-tls", "yes"], "--backend-tls",
                               "expected on, off or KEY=VALUE")
        self.assertConfigError(BASE + ["--backend-tls", "verify=maybe"], "--backend-tls",
                               "verify: expected true or false, got 'maybe'")

    def test_per_cluster(self) -> None:
        """
        [cluster.backend_tls] is the cluster's own; a cluster without one has
        the top-level table's, and backend_tls = false turns it off for one.
        """
        text = (f'[backend_tls]\nca_file = "{self.ca.ca_file}"\n'
                '[[cluster]]\nname = "a"\n[[cluster.backend]]\naddress = "10.0.0.1:6379"\n'
                '[[cluster]]\nname = "b"\n[cluster.backend_tls]\nserver_name = "b.internal"\n'
                '[[cluster.backend]]\naddress = "10.0.0.2:6379"\n'
                '[[cluster]]\nname = "c"\nbackend_tls = false\n'
                '[[cluster.backend]]\naddress = "10.0.0.3:6379"\n'
                '[[listener]]\nlisten = "tcp:1"\ncluster = "a"\n')
        config = parse(["--config", self.write_toml(text)])
        tls = {c.name: c.setting("backend_tls", config) for c in config.clusters}
        self.assertEqual(tls, {"a": BackendTLS(ca_file=self.ca.ca_file),
                               "b": BackendTLS(server_name="b.internal"), "c": None})

    def test_per_cluster_errors_name_the_cluster(self) -> None:
        """A cluster's table is checked as the top-level one, its errors located."""
        path = self.write_toml(cluster_file('[cluster.backend_tls]\nverify = "off"\n'))
        self.assertConfigError(["--config", path], f"cluster[0].backend_tls (in {path})",
                               "verify: expected true or false")

    def test_unix_backend_needs_a_server_name(self) -> None:
        """
        A backend with no host (a unix socket) has no name to check its
        certificate against: server_name is required, unless verify = false.
        """
        self.assertConfigError(["--listen", "tcp:1", "--backend", "unix:path=/run/r.sock",
                                "--backend-tls", "on"], "--backend-tls",
                               "backend 'unix:path=/run/r.sock' has no host name",
                               "set server_name")
        parse(["--listen", "tcp:1", "--backend", "unix:path=/run/r.sock",
               "--backend-tls", "server_name=r.internal"])
        parse(["--listen", "tcp:1", "--backend", "unix:path=/run/r.sock",
               "--backend-tls", "verify=false"])


class TLSEndpointStringTests(ConfigTestCase):
    def test_ssl_and_tls_backends_refused(self) -> None:
        """
        ssl: would verify nothing without hostname=, and neither ssl: nor
        tls: would be counted or reloaded: both are refused, pointing to
        backend_tls.
        """
        for address in ("ssl:host=10.0.0.1:port=6380", "tls:host=redis.internal:port=6380"):
            self.assertConfigError(["--listen", "tcp:1", "--backend", address], "--backend",
                                   repr(address), "set backend_tls", "docs/tls.md")
        path = self.write_toml(cluster_file(
            '[[cluster.backend]]\naddress = "ssl:host=10.0.0.1:port=6380"\n'))
        self.assertConfigError(["--config", path],
                               f"cluster[0].backend[0].address (in {path})", "backend_tls")

    def test_ssl_listener_files_checked(self) -> None:
        """An ssl: listener whose certificate or key does not load stops startup, saying which."""
        ca = TestCA(self)
        cert, key = ca.issue("localhost")
        _, other_key = ca.issue("other")
        parse(["--listen", f"ssl:6380:privateKey={key}:certKey={cert}", "--backend", "a:1"])
        missing = os.path.abspath(self.mktemp())
        for listen, fragment in [
            (f"ssl:6380:privateKey={missing}:certKey={cert}", "No such file or directory"),
            (f"ssl:6380:privateKey={other_key}:certKey={cert}", "do not match"),
        ]:
            self.assertConfigError(["--listen", listen, "--backend", "a:1"],
                                   f"--listen {listen}: cannot load its certificate and key",
                                   fragment)

    def test_tls_listener_refused(self) -> None:
        """Twisted's tls: server endpoint (a directory of PEM files) is refused, pointing to ssl:."""
        self.assertConfigError(["--listen", "tls:/etc/pems:port=6380", "--backend", "a:1"],
                               "--listen: 'tls:/etc/pems:port=6380': tls: listeners are not "
                               "supported; use ssl:PORT:privateKey=KEY.pem:certKey=CERT.pem")

    def test_ssl_listener_backlog(self) -> None:
        """An ssl: listener gets the larger backlog too."""
        from twisted.internet.protocol import Factory
        from twisted.internet.testing import MemoryReactor

        from poolproxy.config.endpoints import server_endpoint

        ca = TestCA(self)
        cert, key = ca.issue("localhost")
        reactor = MemoryReactor()
        server_endpoint(reactor, f"ssl:6380:privateKey={key}:certKey={cert}").listen(Factory())
        self.assertEqual(reactor.tcpServers[0][2], 1024)


class TlsDocTests(ConfigTestCase):
    def test_examples_of_the_tls_page_load(self) -> None:
        """
        Every TOML example of docs/tls.md loads (a fragment inside a cluster
        of its own), its /etc/poolproxy/tls files replaced by the test's.
        """
        ca = TestCA(self)
        cert, key = ca.issue("localhost")
        client_cert, client_key = ca.issue("poolproxy.client")
        files = {"key.pem": key, "cert.pem": cert, "poolproxy-client.pem": client_cert,
                 "poolproxy-client.key": client_key, "pg-proxy.pem": cert, "pg-proxy.key": key}
        with open(os.path.join(ROOT, "docs", "tls.md")) as f:
            blocks = re.findall(r"```toml\n(.*?)```", f.read(), re.DOTALL)
        self.assertGreaterEqual(len(blocks), 4)
        for block in blocks:
            text = re.sub(r"/etc/poolproxy/tls/([\w.-]+)",
                          lambda m: files.get(m.group(1), ca.ca_file), block)
            if text.startswith("[cluster.backend_tls]"):
                text = 'listen = "tcp:6380"\n[[cluster]]\nname = "cache"\n' + text
            flat = re.search(r"^backend = ", text, re.M) is not None
            if "[[cluster]]" not in text and not flat:
                text += '[[cluster]]\nname = "cache"\n'
            if "[[cluster.backend]]" not in text and not flat:
                text += '[[cluster.backend]]\naddress = "10.0.0.1:6379"\n'
            config = parse(["--config", self.write_toml(text)])
            tls = [c.setting("backend_tls", config) for c in config.clusters]
            self.assertTrue(any(tls) or config.client_tls_cert_file
                            or any(l.endpoint.startswith("ssl:") for l in config.listeners), block)
