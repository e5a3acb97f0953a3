#!/usr/bin/env python3
"""Sends N GET requests (keep-alive, reconnecting on close) to HOST:PORT with the given Host header and extra
headers, and prints a JSON object: response body (or "status:<code>") -> count."""
import http.client, json, sys, collections
host, port, vhost, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
headers = {"Host": vhost}
for h in sys.argv[5:]:
    k, v = h.split(":", 1); headers[k] = v
counts = collections.Counter()
conn = None
for i in range(n):
    for attempt in range(3):
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", "/", headers=headers)
            r = conn.getresponse(); body = r.read().decode()
            counts[body if r.status == 200 else f"status:{r.status}"] += 1
            if r.getheader("connection", "").lower() == "close":
                conn.close(); conn = None
            break
        except Exception as e:
            if conn: conn.close()
            conn = None
            if attempt == 2: counts[f"error:{type(e).__name__}"] += 1
print(json.dumps(counts))
