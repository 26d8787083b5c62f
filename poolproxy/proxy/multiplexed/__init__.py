"""
Multiplexed mode (redis, memcached and codecs like them): many clients share
a few pipelined backend connections.
"""
