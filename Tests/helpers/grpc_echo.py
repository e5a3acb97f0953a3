#!/usr/bin/env python3
"""Proxyless gRPC through weir: `server HOST:PORT NAME` serves /weir.test.Echo/Say (raw bytes, answers NAME);
`client TARGET` calls it once through TARGET (for example xds:///echo.apps.svc.cluster.local:7070, with
GRPC_XDS_BOOTSTRAP set) and prints the answer."""
import sys, time
import grpc
from concurrent import futures

if sys.argv[1] == "server":
    name = sys.argv[3].encode()
    handler = grpc.method_handlers_generic_handler("weir.test.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(lambda req, ctx: name + b":" + req)})
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    s.add_generic_rpc_handlers((handler,))
    s.add_insecure_port(sys.argv[2])
    s.start()
    s.wait_for_termination()
else:
    with grpc.insecure_channel(sys.argv[2]) as ch:
        say = ch.unary_unary("/weir.test.Echo/Say")
        print(say(b"hello", timeout=20, wait_for_ready=True).decode())
