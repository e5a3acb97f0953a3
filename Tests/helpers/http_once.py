#!/usr/bin/env python3
"""One HTTP/1.1 request, as an application would send it: prints "STATUS SERVER" (the Server header, or -), or
"closed" when the connection ends without a response.

usage: http_once.py ADDRESS PORT METHOD PATH HOST [name:value]...
"""
import http.client
import sys

address, port, method, path, host = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
headers = {"Host": host}
for h in sys.argv[6:]:
    k, v = h.split(":", 1)
    headers[k.strip()] = v.strip()
conn = http.client.HTTPConnection(address, port, timeout=10)
try:
    conn.request(method, path, body=b"" if method in ("POST", "PUT") else None, headers=headers)
    r = conn.getresponse()
    r.read()
    print(r.status, r.getheader("server", "-"))
except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
    print("closed")
