#!/usr/bin/env python3
"""Decodes resources weir encoded with the public Envoy API (xds-protos) and compares them, field by field, with
weir's own JSON rendering of the same messages. Input: a JSON file [{"type_url", "bytes" (base64), "json"}].
Prints each mismatch; exit 1 on any."""
import base64, importlib, json, sys
from google.protobuf import json_format, symbol_database
for m in ["envoy.config.listener.v3.listener_pb2", "envoy.config.cluster.v3.cluster_pb2", "envoy.config.endpoint.v3.endpoint_pb2",
          "envoy.config.route.v3.route_pb2", "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
          "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2", "envoy.extensions.filters.http.router.v3.router_pb2",
          "envoy.extensions.filters.listener.original_dst.v3.original_dst_pb2", "envoy.extensions.access_loggers.file.v3.file_pb2",
          "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2", "envoy.service.discovery.v3.discovery_pb2"]:
    importlib.import_module(m)
db = symbol_database.Default()
entries = json.load(open(sys.argv[1]))
bad = 0
for e in entries:
    cls = db.GetSymbol(e["type_url"].split("/")[-1])
    msg = cls()
    msg.ParseFromString(base64.b64decode(e["bytes"]))
    theirs = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    if theirs != e["json"]:
        bad += 1
        print("MISMATCH", e["type_url"], json.dumps(theirs, sort_keys=True)[:400], "vs", json.dumps(e["json"], sort_keys=True)[:400])
print(f"{len(entries)} resources decoded by xds-protos, {bad} mismatches")
sys.exit(1 if bad or not entries else 0)
