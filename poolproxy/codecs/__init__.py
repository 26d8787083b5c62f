"""
The protocols poolproxy ships: pure codecs (bytes in, frames out), one module each.
"""
