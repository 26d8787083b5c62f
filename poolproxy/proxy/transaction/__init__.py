"""
Transaction pooling (PostgreSQL): the client side (L{client}), how clients
authenticate and what servers are logged into with (L{auth}), and the
server connections with their pools per (database, user) (L{server}).
"""
