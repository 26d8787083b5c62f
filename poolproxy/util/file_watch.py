"""
Noticing that a file changed (C{watch_config}): its path is looked at every
L{INTERVAL} seconds on the reactor's clock, through symlinks.

What is compared is where the path leads (every symlink resolved) and that
file's device, inode, modification time and size.  So an edit in place, a
new file renamed over the old one, and the way kubelet updates a mounted
ConfigMap are all seen: there the file is a symlink through C{..data},
itself a symlink to a timestamped directory, and an update writes a new
directory and swaps C{..data} in one rename (the file's own path, and
often its mtime, never change).  One C{stat} and one C{realpath} a second
cost nothing; inotify would miss the swap unless it watched the directory.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Tuple

from twisted.application.service import Service
from twisted.logger import Logger

from poolproxy.util.loops import GuardedLoop

#: Seconds between two looks at the file.
INTERVAL = 1.0

#: Where the path leads, and that file's device, inode, mtime (ns) and size.
Signature = Tuple[str, int, int, int, int]


def signature(path: str) -> Optional[Signature]:
    """The file C{path} leads to, as compared; L{None} if there is none."""
    try:
        target = os.path.realpath(path)
        st = os.stat(target)
    except OSError:
        return None
    return (target, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class FileWatcher(Service):
    """
    Calls C{changed()} once for each change of C{path} seen while running.
    A file that disappears is waited for (logged once): a reload now would
    only fail; its return counts as a change.
    """

    log = Logger("poolproxy.watch")

    def __init__(self, path: str, changed: Callable[[], Any], clock: Any,
                 interval: float = INTERVAL) -> None:
        self.path = path
        self.changed = changed
        self.interval = interval
        self.last: Optional[Signature] = None
        self._missing = False
        self._loop = GuardedLoop(self.check, clock, self.log, "watching {path}", path=path)

    def startService(self) -> None:
        super().startService()
        self.last = signature(self.path)
        self._loop.start(self.interval, now=False)
        self.log.info("watching {path} for changes (watch_config)", path=self.path)

    def stopService(self) -> None:
        super().stopService()
        self._loop.stop()

    def check(self) -> None:
        """Look at the file once: C{changed()} if it differs from the last look."""
        now = signature(self.path)
        if now is None:
            if not self._missing:
                self._missing = True
                self.log.warn("{path} is gone; reloading when it is back", path=self.path)
            return
        self._missing = False
        if now == self.last:
            return
        self.last = now
        self.log.info("{path} changed: reloading", path=self.path)
        self.changed()


__all__ = ["FileWatcher", "INTERVAL", "signature"]
