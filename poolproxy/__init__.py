"""
poolproxy: a protocol-aware, connection-pooling reverse proxy built on Twisted.

Clients connect to listeners; their requests are admitted through a bounded
worker semaphore and sent over a bounded pool of reusable backend connections.
Start it with C{twistd -n poolproxy --help}.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
