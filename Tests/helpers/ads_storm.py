#!/usr/bin/env python3
"""ads_storm.py SOCKET N: opens one ADS stream (node n1, CDS) to weir on a Unix socket, then N more on the same
channel (one HTTP/2 connection); once each has its first response and a line arrives on standard input, cancels the
N at once (N RST_STREAMs together).
Then waits up to 15 s for a second response on the first stream and prints PUSHED, or FAILED and why."""
import asyncio, sys
import grpc
from envoy.service.discovery.v3 import discovery_pb2, ads_pb2_grpc

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def request():
    r = discovery_pb2.DiscoveryRequest(type_url=CDS)
    r.node.id = "n1"
    return r


async def main(sock, n):
    async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        first_call = stub.StreamAggregatedResources()
        await first_call.write(request())
        first = await first_call.read()
        await first_call.write(discovery_pb2.DiscoveryRequest(type_url=CDS, version_info=first.version_info, response_nonce=first.nonce))
        calls = [stub.StreamAggregatedResources() for _ in range(n)]
        for c in calls:
            await c.write(request())
        for c in calls:
            await c.read()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for c in calls:
            c.cancel()
        print("CANCELLED", flush=True)
        try:
            second = await asyncio.wait_for(first_call.read(), 15)
        except Exception as e:  # noqa: BLE001 - the reason is the output
            print(f"FAILED: {e!r}", flush=True)
            return
        if second is grpc.aio.EOF or second.version_info == first.version_info:
            print(f"FAILED: {second}", flush=True)
        else:
            print("PUSHED", flush=True)
        first_call.cancel()


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
