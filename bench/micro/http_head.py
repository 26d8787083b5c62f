"""
Serialising a parsed nginx response head (poolproxy.codecs.http_parse).
"""
import os
import sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from poolproxy.codecs.http_parse import ResponseParser, serialize_response_head
resp = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 24 Nov 2026 07:00:00 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 17\r\nConnection: keep-alive\r\n\r\nhello from nginx\n")
p = ResponseParser(); p.expect(b"GET")
head = p.feed(resp)[0]
n = 200000
t = time.perf_counter()
for _ in range(n):
    serialize_response_head(head)
print(f"serialize nginx response head: {(time.perf_counter() - t) / n * 1e6:.2f} us")
print(serialize_response_head(head))
