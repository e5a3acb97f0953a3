#!/usr/bin/env python3
"""ads_once.py TARGET NODE: one ADS stream (state of the world, LDS) to TARGET (a grpc target such as
127.0.0.1:15010 or unix-abstract:weir/xds) as node NODE. Prints "OK VERSION" for the first response, or
"ERROR CODE DETAILS" when the stream ends with a status."""
import sys
import grpc
from envoy.service.discovery.v3 import discovery_pb2, ads_pb2_grpc

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"


def main(target, node):
    with grpc.insecure_channel(target) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        request = discovery_pb2.DiscoveryRequest(type_url=LDS)
        request.node.id = node
        try:
            for response in stub.StreamAggregatedResources(iter([request]), timeout=10):
                print(f"OK {response.version_info}", flush=True)
                return
            print("ERROR EOF no response", flush=True)
        except grpc.RpcError as e:
            print(f"ERROR {e.code().name} {e.details()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
