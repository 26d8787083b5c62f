"""
Certificates made when a test runs, with trustme: a CA of the test's own and
the certificates it issues, written as PEM files in the test's temporary
directory.  No key is ever committed.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Tuple

import trustme
from cryptography import x509


class TestCA:
    """
    A certificate authority for one test.

    @ivar ca_file: its certificate (PEM), what clients and the proxy trust.
    """

    def __init__(self, testcase: object, name: str = "poolproxy test CA") -> None:
        self.ca = trustme.CA(organization_name=name)
        self.dir = os.path.abspath(testcase.mktemp())  # type: ignore[attr-defined]
        os.makedirs(self.dir)
        self.ca_file = os.path.join(self.dir, "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self._issued = 0

    def issue(self, *hosts: str, cert_file: str = "", key_file: str = "") -> Tuple[str, str]:
        """
        A certificate for C{hosts} (names or IP addresses), written to
        C{cert_file} (with its chain) and C{key_file}, new files in the
        test's directory unless given (then replaced: a rotation).

        @return: (cert_file, key_file)
        """
        self._issued += 1
        issued = self.ca.issue_cert(*hosts)
        cert_file = cert_file or os.path.join(self.dir, f"cert{self._issued}.pem")
        key_file = key_file or os.path.join(self.dir, f"key{self._issued}.pem")
        # Written beside and renamed, as deployment tools do: a reader never
        # sees half a file.
        for path, blobs in ((cert_file, issued.cert_chain_pems), (key_file, [issued.private_key_pem])):
            with open(path + ".new", "wb") as f:
                for blob in blobs:
                    f.write(blob.bytes())
            os.replace(path + ".new", path)
        return cert_file, key_file


def serial(cert_file: str) -> int:
    """The serial number of the first certificate in a PEM file."""
    with open(cert_file, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).serial_number


def served_serial(port: int, ca_file: str, host: str = "localhost") -> int:
    """The serial number of the certificate a TLS server on 127.0.0.1:port serves (verified)."""
    context = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as s:
            der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
