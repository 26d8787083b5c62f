"""
The backend side: clusters of backends, how one is picked (balancing), when
one is taken out (circuit breaker, health checks), the retry budget, and the
bounded pool of connections to each.  Nothing here reads the configuration
or knows a client: it takes plain values.
"""
