#!/usr/bin/env python3
"""A test backend: answers every request with its name. `--fail-first N` answers 503 to the first N requests.
GET /hits returns how many requests (other than /hits) it has seen."""
import argparse, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

p = argparse.ArgumentParser()
p.add_argument("host"); p.add_argument("port", type=int); p.add_argument("name")
p.add_argument("--fail-first", type=int, default=0)
a = p.parse_args()
lock, hits = threading.Lock(), [0]

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle the body waits for the peer's delayed ACK (40 ms a request).
    disable_nagle_algorithm = True
    def do_GET(self):
        if self.path == "/hits":
            body = str(hits[0]).encode(); status = 200
        else:
            with lock:
                hits[0] += 1; n = hits[0]
            status = 503 if n <= a.fail_first else 200
            body = a.name.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass

ThreadingHTTPServer.allow_reuse_address = True
ThreadingHTTPServer((a.host, a.port), H).serve_forever()
