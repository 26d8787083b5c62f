"""
The secrets poolproxy reads from files (the client and backend passwords,
the admin token), held where every user of one reads its current value, so
that SIGHUP can replace it in place: L{SecretFile.reload} reads the file
again, and what comes after uses the new secret (a client connecting, a
backend connection being set up, an admin request).  A file that no longer
reads leaves the secret in use as it was.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from poolproxy.config.settings import read_secret


class SecretFile:
    """
    One secret: the first line of a file.

    @ivar name: the setting that names the file, e.g. C{client_password_file}.
    @ivar value: the secret in use.
    """

    def __init__(self, name: str, path: str, where: str) -> None:
        """
        @param where: how errors name the setting (its flag, or key and file).
        @raise ConfigError: the file cannot be read or holds no secret.
        """
        self.name = name
        self.path = path
        self.where = where
        self.value = read_secret(path, where)

    def reload(self) -> Optional[str]:
        """
        Read the file again and use what it holds now.

        @return: what changed, in words that never quote the secret, or
            L{None} if it is the same.
        @raise ConfigError: the file cannot be read or holds no secret; the
            secret in use is kept.
        """
        value = read_secret(self.path, self.where)
        if value == self.value:
            return None
        self.value = value
        return f"a new secret from {self.path} is in use"


class Secrets:
    """
    The secret files of a configuration, by setting: those that are set.
    """

    #: The settings that name secret files.
    KEYS = ("client_password_file", "backend_password_file", "admin_token_file")

    def __init__(self, files: Optional[Dict[str, SecretFile]] = None) -> None:
        self.files: Dict[str, SecretFile] = dict(files or {})

    @classmethod
    def read(cls, config: Any) -> "Secrets":
        """
        Read the secret files a L{ProxyConfig} names.

        @raise ConfigError: one cannot be read.
        """
        sources = getattr(config, "sources", {})
        files = {}
        for key in cls.KEYS:
            path = getattr(config, key, None)
            if path:
                files[key] = SecretFile(key, path, sources.get(key, "--" + key.replace("_", "-")))
        return cls(files)

    def value(self, key: str) -> Optional[str]:
        """The secret in use for setting C{key}, or L{None} if it is not set."""
        held = self.files.get(key)
        return held.value if held is not None else None

    @property
    def client_password(self) -> Optional[str]:
        return self.value("client_password_file")

    @property
    def backend_password(self) -> Optional[str]:
        return self.value("backend_password_file")

    @property
    def admin_token(self) -> Optional[str]:
        return self.value("admin_token_file")


__all__ = ["SecretFile", "Secrets"]
