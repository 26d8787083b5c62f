# The protocols poolproxy ships, as lazy codec plugins (see poolproxy.plugins).
from poolproxy.plugins import CodecPlugin

tcp = CodecPlugin("tcp", "poolproxy.codecs.tcp", "Raw TCP: one pooled backend connection per client session.")
redis = CodecPlugin("redis", "poolproxy.codecs.redis", "Redis (RESP2/RESP3), many clients multiplexed per backend connection.")
memcached = CodecPlugin("memcached", "poolproxy.codecs.memcached", "memcached text protocol, multiplexed.")
http = CodecPlugin("http", "poolproxy.codecs.http", "HTTP/1.1 with keep-alive backend connections leased per request.")
postgres = CodecPlugin("postgres", "poolproxy.codecs.postgres", "PostgreSQL, server connections pooled per transaction (or session) and per (database, user).")
