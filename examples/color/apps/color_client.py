#!/usr/bin/env python3
"""The client application: N plain HTTP requests to a URL (no proxy settings: the pod's sidecar does the mesh's
work), and the count of each answer as JSON ({"color-v1": 903, "color-v2": 97}; failures as "HTTP 404" or the
error's name).

usage: color_client.py URL N
"""
import collections
import http.client
import json
import sys
from urllib.parse import urlsplit

url, n = urlsplit(sys.argv[1]), int(sys.argv[2])
counts = collections.Counter()
conn = None
for _ in range(n):
    try:
        if conn is None:
            conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
        conn.request("GET", url.path or "/")
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
        counts[body if r.status == 200 else f"HTTP {r.status}"] += 1
        if r.getheader("connection", "").lower() == "close":
            conn.close()
            conn = None
    except (OSError, http.client.HTTPException) as e:
        counts[type(e).__name__] += 1
        if conn is not None:
            conn.close()
        conn = None
print(json.dumps(dict(sorted(counts.items()))))
