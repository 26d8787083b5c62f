"""
Small Twisted helpers with one job each, used across the request path.
Nothing here imports the rest of poolproxy.
"""
