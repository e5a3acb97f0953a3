#!/usr/bin/env python3
"""An echo server for the restart tests: every byte a client sends comes back, on as many connections as it likes.

usage: echo_server.py HOST PORT
"""
import os
import socket
import sys
import threading


def serve(conn):
    with conn:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                conn.sendall(data)
            except OSError:
                return


def main():
    # Started in the background by a test's command, it closes what it inherited: the test's Foundation Process, which
    # ran that command, sees it end only once every copy of one of those descriptors is closed.
    os.closerange(3, 65536)
    host, port = sys.argv[1], int(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(4096)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
