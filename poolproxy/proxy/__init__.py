"""
The client side of the request path, one module per pooling mode: each
mode's frontend (client connections) and backend protocol (what a pooled
connection speaks), and the admission gate every request goes through.
docs/architecture.md maps the modes to their modules.
"""
