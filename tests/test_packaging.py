"""
Packaging traps (see daphne's and txtorcon's histories): the wheel must carry
the plugin module, and must not carry a twisted/__init__.py,
twisted/plugins/__init__.py or a dropin.cache that would shadow Twisted's own.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile

from twisted.trial.unittest import SynchronousTestCase

from tests.support import ROOT, twistd_command


class PackagingTests(SynchronousTestCase):
    def test_wheel_contents(self) -> None:
        """
        A wheel built from the checkout holds the plugin module and the
        package, and nothing that would replace part of Twisted.
        """
        out = os.path.abspath(self.mktemp())
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
             "--no-deps", "-w", out, ROOT],
            check=True, timeout=300, cwd=ROOT,
        )
        [wheel] = glob.glob(os.path.join(out, "poolproxy-*.whl"))
        names = set(zipfile.ZipFile(wheel).namelist())
        for plugin in ("poolproxy_plugin", "poolproxy_codecs", "poolproxy_reactors"):
            self.assertIn(f"twisted/plugins/{plugin}.py", names)
        self.assertIn("poolproxy/tap.py", names)
        for forbidden in ("twisted/__init__.py", "twisted/plugins/__init__.py",
                          "twisted/plugins/dropin.cache"):
            self.assertNotIn(forbidden, names)
        self.assertFalse([n for n in names if n.startswith("tests/")], "tests shipped")

    def test_twistd_lists_plugin(self) -> None:
        """
        twistd, as installed here, lists the poolproxy command.
        """
        result = subprocess.run(twistd_command("--help"), capture_output=True, text=True,
                                timeout=120, cwd=ROOT)
        self.assertIn("poolproxy", result.stdout)

    def test_twistd_lists_reactor(self) -> None:
        """
        twistd, as installed here, offers --reactor=poolproxy-epoll.
        """
        result = subprocess.run(twistd_command("--help-reactors"), capture_output=True,
                                text=True, timeout=120, cwd=ROOT)
        self.assertIn("poolproxy-epoll", result.stdout)
