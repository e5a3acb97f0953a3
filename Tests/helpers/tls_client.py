#!/usr/bin/env python3
"""tls_client.py HOST PORT [--ca FILE] [--cert FILE --key FILE] [--sni NAME] [--plain] [--host HEADER] [--path /p]
[--timeout S]: one HTTP/1.1 GET to HOST:PORT, over TLS 1.2+ (ALPN http/1.1) or, with --plain, plain TCP.
The server's chain is verified against --ca (the system store without it); its name is checked against --sni when
given (which is also sent as SNI), otherwise not checked. --cert/--key are presented as the client certificate (mTLS).
Prints one line: `ok <status> <first line of body>` and exits 0 on an HTTP response, or `error <short reason>` and
exits 1 (handshake failure, reset, timeout, closed without response...); exits 2 on bad arguments or files."""
import argparse, http.client, select, socket, ssl, sys

p = argparse.ArgumentParser()
p.add_argument("host"); p.add_argument("port", type=int)
p.add_argument("--ca"); p.add_argument("--cert"); p.add_argument("--key"); p.add_argument("--sni")
p.add_argument("--plain", action="store_true")
p.add_argument("--host", dest="vhost"); p.add_argument("--path", default="/")
p.add_argument("--timeout", type=float, default=5.0)
a = p.parse_args()
VERDICT_WAIT = 0.1  # seconds; see await_verdict
if bool(a.cert) != bool(a.key):
    p.error("--cert and --key go together")


def context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = a.sni is not None
    if a.ca:
        ctx.load_verify_locations(cafile=a.ca)
    else:
        ctx.load_default_certs()
    if a.cert:
        ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def reason(e):
    """A short, single-line reason for a failed exchange."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"tls verify failed: {e.verify_message}"
    if isinstance(e, ssl.SSLEOFError):
        return "tls unexpected eof"
    if isinstance(e, ssl.SSLError):
        return f"tls {e.reason or e.library or type(e).__name__}".replace("\n", " ")
    # RemoteDisconnected (closed before a status line) is also a ConnectionResetError: test it first.
    if isinstance(e, (http.client.RemoteDisconnected, http.client.IncompleteRead)):
        return "closed without response"
    if isinstance(e, http.client.HTTPException):
        return f"bad response: {type(e).__name__}"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (ConnectionResetError, BrokenPipeError)):
        return "connection reset"
    return f"{type(e).__name__}: {e}".replace("\n", " ")


def await_verdict(sock):
    """With TLS 1.3 the server judges our certificate after our side of the handshake is over. If we wrote the
    request first, its alert would usually be lost (we'd see only an EOF), so wait up to VERDICT_WAIT for it and read
    it before sending anything. A server that takes us says nothing (BoringSSL, hence Envoy, sends its session tickets
    only with its first write), so on success this costs the whole wait; a late alert still fails the request."""
    if sock.version() != "TLSv1.3" or not select.select([sock], [], [], min(a.timeout, VERDICT_WAIT))[0]:
        return
    sock.setblocking(False)
    try:
        if sock.recv(1) == b"":
            raise http.client.RemoteDisconnected("closed after handshake")
        raise http.client.HTTPException("data before the request")
    except ssl.SSLWantReadError:
        pass  # a session ticket, nothing else: the server took us
    finally:
        sock.settimeout(a.timeout)


def main():
    try:
        ctx = None if a.plain else context()
    except (OSError, ssl.SSLError) as e:  # an unreadable --ca/--cert is a mistake in the test, not an outcome
        print(f"error setup: {e}".replace("\n", " "), flush=True)
        return 2
    sock = None
    try:
        sock = socket.create_connection((a.host, a.port), timeout=a.timeout)
        if ctx:
            sock = ctx.wrap_socket(sock, server_hostname=a.sni)
            await_verdict(sock)
        request = (f"GET {a.path} HTTP/1.1\r\nHost: {a.vhost or a.host}\r\nUser-Agent: weir-tls-client\r\n"
                   f"Accept: */*\r\nConnection: close\r\n\r\n")
        sock.sendall(request.encode())
        r = http.client.HTTPResponse(sock)
        r.begin()
        body = r.read().decode(errors="replace")
    except Exception as e:  # noqa: BLE001 - the reason is the output
        print(f"error {reason(e)}", flush=True)
        return 1
    finally:
        if sock:
            sock.close()
    lines = body.splitlines()
    print(f"ok {r.status} {lines[0] if lines else ''}".rstrip(), flush=True)
    return 0


sys.exit(main())
