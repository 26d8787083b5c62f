"""
poolproxy's trial suite: units with fakes and Clock, integration over real
loopback sockets.
"""
