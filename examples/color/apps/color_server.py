#!/usr/bin/env python3
"""The color application: answers every request with its version ("color-v1"). It knows nothing of the mesh.

usage: color_server.py PORT VERSION
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, version = int(sys.argv[1]), sys.argv[2].encode()


class Color(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(version)))
        self.end_headers()
        self.wfile.write(version)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", port), Color).serve_forever()
