"""
What the operator sees and does: the web tree (/metrics, /healthz, /readyz,
/status, the admin API), the Prometheus collector, reload on SIGHUP and the
summary of rejected requests.
"""
