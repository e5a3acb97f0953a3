#!/usr/bin/env python3
"""sds_server.py SOCKET_PATH CERT_DIR: an SDS server (envoy.service.secret.v3.SecretDiscoveryService StreamSecrets,
state of the world) on the Unix socket SOCKET_PATH, serving secrets from a directory made by make_certs.sh:
  spiffe://weir.test/server  tls_certificate from server.pem / server-key.pem
  spiffe://weir.test/client  tls_certificate from client.pem / client-key.pem
  spiffe://weir.test         validation_context (trusted_ca) from ca.pem
Answers a DiscoveryRequest when its resource names or version differ from what it last sent on that stream (so not
ACKs, and not NACKs for the same names), with the known requested secrets, version "1". Unknown names are left out;
a request naming no known secret gets no answer. Logs to stderr, a line each:
  request <names> version=<v> nonce=<n> node=<id>     response <names> version=1 nonce=<n>
  (and: unknown <names>, nack <error>, stream open/closed). Runs until SIGTERM/SIGINT."""
import itertools, os, signal, sys, threading
from concurrent import futures
import grpc
from google.protobuf import any_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
VERSION = "1"
sock_path, cert_dir = sys.argv[1], sys.argv[2]


def read(name):
    with open(os.path.join(cert_dir, name), "rb") as f:
        return f.read()


def tls_certificate(name, leaf):
    s = secret_pb2.Secret(name=name)
    s.tls_certificate.certificate_chain.inline_bytes = read(f"{leaf}.pem")
    s.tls_certificate.private_key.inline_bytes = read(f"{leaf}-key.pem")
    return s


def validation_context(name):
    s = secret_pb2.Secret(name=name)
    s.validation_context.trusted_ca.inline_bytes = read("ca.pem")
    return s


SECRETS = {s.name: s for s in [tls_certificate("spiffe://weir.test/server", "server"),
                               tls_certificate("spiffe://weir.test/client", "client"),
                               validation_context("spiffe://weir.test")]}
nonces = itertools.count(1)
log_lock = threading.Lock()


def log(line):
    with log_lock:
        print(line, file=sys.stderr, flush=True)


def names(ns):
    return ",".join(ns) if ns else "(none)"


class SDS(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def StreamSecrets(self, requests, context):
        node, sent = "", None  # sent: (sorted names, version) of the last response on this stream
        log(f"stream open peer={context.peer()}")
        try:
            for req in requests:
                node = req.node.id or node  # Envoy sends the node only on a stream's first request
                log(f"request {names(req.resource_names)} version={req.version_info} nonce={req.response_nonce} node={node}")
                if req.HasField("error_detail"):
                    log(f"nack {req.error_detail.message}")
                wanted = sorted(set(req.resource_names))
                if sent is not None and sent[0] == wanted and (sent[1] == req.version_info or req.HasField("error_detail")):
                    continue  # an ACK (or a NACK of what we sent): nothing new to say
                unknown = [n for n in wanted if n not in SECRETS]
                if unknown:
                    log(f"unknown {names(unknown)}")
                known = [n for n in wanted if n in SECRETS]
                if not known:
                    continue
                resp = discovery_pb2.DiscoveryResponse(version_info=VERSION, type_url=TYPE_URL, nonce=str(next(nonces)))
                for n in known:
                    a = any_pb2.Any()
                    a.Pack(SECRETS[n])
                    resp.resources.append(a)
                sent = (wanted, VERSION)
                log(f"response {names(known)} version={VERSION} nonce={resp.nonce}")
                yield resp
        finally:
            log(f"stream closed node={node}")


def main():
    if os.path.exists(sock_path) or os.path.islink(sock_path):
        os.unlink(sock_path)  # a stale socket from an earlier run
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))  # each open stream holds a worker
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(SDS(), server)
    server.add_insecure_port(f"unix:{os.path.abspath(sock_path)}")
    server.start()
    os.chmod(sock_path, 0o666)  # an Envoy running as another uid (1337) must connect
    log(f"listening unix:{sock_path} secrets={names(sorted(SECRETS))}")
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(0).wait()
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    log("stopped")


main()
