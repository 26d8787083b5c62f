"""
Two tenants on one redis listener (docs/hooks.md).

Each client AUTHs as a user of the tenants file; its requests go to its
tenant's cluster (route), and it may only touch keys under its tenant's
prefix, "TENANT:" (allow).  The file, TENANTS_FILE (by default
/etc/poolproxy/tenants), has one line per user:

    # user      password     tenant   cluster
    alice       s3cret-a     acme     redis-acme
    bob         s3cret-b     globex   redis-globex

It is read when this module is imported: at start, and again on SIGHUP,
which imports hook modules afresh.

    [hooks]
    authenticate = "tenants:authenticate"
    route = "tenants:route"
    allow = "tenants:allow"
"""

import hmac
import os


class Tenant:
    """What authenticate returns: the client's identity, read by route and allow."""

    def __init__(self, name, cluster):
        self.name = name
        self.cluster = cluster
        self.prefix = name.encode() + b":"

    def __repr__(self):
        return f"Tenant({self.name!r})"


def read_users(path):
    """user -> (password, Tenant), from the tenants file."""
    users = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) != 4:
                raise ValueError(f"{path}:{number}: expected USER PASSWORD TENANT CLUSTER")
            user, password, tenant, cluster = words
            users[user] = (password, Tenant(tenant, cluster))
    return users


USERS = read_users(os.environ.get("TENANTS_FILE", "/etc/poolproxy/tenants"))


def authenticate(client):
    """AUTH user password: the user's Tenant, or False."""
    entry = USERS.get(client.username)
    if entry is None or not hmac.compare_digest(entry[0].encode(),
                                                (client.password or "").encode()):
        return False
    return entry[1]


def route(request):
    """The tenant's cluster (an unauthenticated client sends nothing to route)."""
    tenant = request.client.identity
    return tenant.cluster if tenant is not None else None


def allow(request):
    """Every key the request names must be under the tenant's prefix."""
    tenant = request.client.identity
    for key in request.keys:
        if not key.startswith(tenant.prefix):
            return f"{tenant.name} may only use keys under {tenant.prefix.decode()}"
    return None
