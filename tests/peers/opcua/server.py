#!/usr/bin/env python3
"""OPC UA test peer for streamgate (asyncua server on 127.0.0.1).

Variables in namespace URI `urn:streamgate:test` (its index is shifted by --extra-namespaces so
configs must resolve `nsu=`):
  s=Line1.Temp    Double   changes every tick; status cycles Good, Good, Uncertain, Bad
  i=1001          Int32    counter, changes every tick
  s=Line1.Running Boolean  toggles every tick
  s=Line1.Recipe  String   changes every tick
  s=Line1.Arr     Double[3] the tick in element 1
A static tree for `streamgate browse` (nothing here changes):
  Plant (folder, s=Plant) / Area1 (folder, s=Plant.Area1) / Filler (object, s=Plant.Area1.Filler):
    s=Plant.Area1.Filler.Speed   Double 12.5, writable
    s=Plant.Area1.Filler.Count   UInt32 7
    s=Plant.Area1.Filler.Levels  Double[3] [1.5, 2.5, 3.5]
Every write carries an explicit SourceTimestamp (server clock minus 1.234 s, ms precision) so
tests can tell it from gateway time. Each write is logged as one JSON line to --log:
  {"tag": ..., "value": ..., "source_ms": ..., "status": "Good|Uncertain|Bad"}
Prints "READY <endpoint>" on stdout once it listens. With --bench N it creates N Double
variables (s=Bench.<k>) and rewrites them all as fast as it can, without a log.
"""
import argparse
import asyncio
import datetime as dt
import json
import sys
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

URI = "urn:streamgate:test"
STATUS = [ua.StatusCodes.Good, ua.StatusCodes.Good, ua.StatusCodes.UncertainLastUsableValue,
          ua.StatusCodes.BadSensorFailure]
STATUS_NAME = ["Good", "Good", "Uncertain", "Bad"]


def ms(t):
    return int(t.replace(tzinfo=dt.timezone.utc).timestamp() * 1000) if t.tzinfo is None \
        else int(t.timestamp() * 1000)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log")
    p.add_argument("--interval-ms", type=int, default=100)
    p.add_argument("--ticks", type=int, default=1_000_000)
    p.add_argument("--start", type=int, default=0, help="first tick number (restarts continue)")
    p.add_argument("--extra-namespaces", type=int, default=0)
    p.add_argument("--secure", help="directory for the server key/cert (created if missing)")
    p.add_argument("--policy", default="Basic256Sha256_SignAndEncrypt",
                   help="the one secure policy offered, as asyncua names it")
    p.add_argument("--bench", type=int, default=0)
    a = p.parse_args()

    endpoint = f"opc.tcp://127.0.0.1:{a.port}/streamgate/"
    server = Server()
    await server.init()
    server.set_endpoint(endpoint)
    server.set_server_name("streamgate test peer")
    if a.secure:
        d = Path(a.secure)
        d.mkdir(parents=True, exist_ok=True)
        await setup_self_signed_certificate(
            d / "server-key.pem", d / "server-cert.der", server.get_application_uri(),
            "127.0.0.1", [ExtendedKeyUsageOID.SERVER_AUTH], {"commonName": "streamgate test peer"})
        await server.load_certificate(str(d / "server-cert.der"))
        await server.load_private_key(str(d / "server-key.pem"))
        server.set_security_policy([getattr(ua.SecurityPolicyType, a.policy)])
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])

    for k in range(a.extra_namespaces):
        await server.register_namespace(f"urn:streamgate:filler:{k}")
    idx = await server.register_namespace(URI)
    line = await server.nodes.objects.add_object(ua.NodeId("Line1", idx), "Line1")
    temp = await line.add_variable(ua.NodeId("Line1.Temp", idx), "Temp", 0.0, ua.VariantType.Double)
    counter = await line.add_variable(ua.NodeId(1001, idx), "Counter", 0, ua.VariantType.Int32)
    running = await line.add_variable(ua.NodeId("Line1.Running", idx), "Running", False)
    recipe = await line.add_variable(ua.NodeId("Line1.Recipe", idx), "Recipe", "none")
    arr = await line.add_variable(ua.NodeId("Line1.Arr", idx), "Arr", [0.0, 0.0, 0.0],
                                  ua.VariantType.Double)
    # A 32-bit Float: the gateway sends its shortest decimal (0.3, not 0.30000001192092896).
    ftemp = await line.add_variable(ua.NodeId("Line1.FloatTemp", idx), "FloatTemp", 0.0,
                                    ua.VariantType.Float)
    # A 2x2 matrix (row after row): the tag with index "1,0" reads the first value of row 1.
    matrix = await line.add_variable(ua.NodeId("Line1.Matrix", idx), "Matrix",
                                     ua.Variant([0.0] * 4, ua.VariantType.Double, Dimensions=[2, 2]))
    plant = await server.nodes.objects.add_folder(ua.NodeId("Plant", idx), "Plant")
    area = await plant.add_folder(ua.NodeId("Plant.Area1", idx), "Area1")
    filler = await area.add_object(ua.NodeId("Plant.Area1.Filler", idx), "Filler")
    speed = await filler.add_variable(ua.NodeId("Plant.Area1.Filler.Speed", idx), "Speed", 12.5,
                                      ua.VariantType.Double)
    await speed.set_writable()
    await filler.add_variable(ua.NodeId("Plant.Area1.Filler.Count", idx), "Count", 7,
                              ua.VariantType.UInt32)
    await filler.add_variable(ua.NodeId("Plant.Area1.Filler.Levels", idx), "Levels",
                              [1.5, 2.5, 3.5], ua.VariantType.Double)
    bench = []
    for k in range(a.bench):
        bench.append(await line.add_variable(ua.NodeId(f"Bench.{k}", idx), f"B{k}", 0.0,
                                             ua.VariantType.Double))

    log = open(a.log, "a", buffering=1) if a.log else None

    async def write(node, tag, variant, status_i, logged_value):
        now = dt.datetime.now(dt.timezone.utc)
        src = (now - dt.timedelta(milliseconds=1234)).replace(microsecond=(now.microsecond // 1000) * 1000)
        dv = ua.DataValue(variant, StatusCode=ua.StatusCode(STATUS[status_i]),
                          SourceTimestamp=src, ServerTimestamp=now)
        await node.write_value(dv)
        if log:
            log.write(json.dumps({"tag": tag, "value": logged_value, "source_ms": ms(src),
                                  "status": STATUS_NAME[status_i]}) + "\n")

    async with server:
        print(f"READY {endpoint}", flush=True)
        if a.bench:
            v, wrote, next_report = 0.0, 0, asyncio.get_running_loop().time() + 1
            while True:
                v += 1.0
                for k, n in enumerate(bench):
                    await n.write_value(ua.DataValue(ua.Variant(v, ua.VariantType.Double)))
                    if k % 20 == 19:
                        await asyncio.sleep(0)  # let the publish loop run
                wrote += len(bench)
                if asyncio.get_running_loop().time() >= next_report:
                    print(f"WROTE {wrote}", flush=True)
                    next_report += 1
                await asyncio.sleep(0)
        for tick in range(a.start, a.start + a.ticks):
            await asyncio.sleep(a.interval_ms / 1000)
            t = tick * 0.5
            await write(temp, "temp", ua.Variant(t, ua.VariantType.Double), tick % 4, t)
            await write(counter, "counter", ua.Variant(tick, ua.VariantType.Int32), 0, tick)
            await write(running, "running", ua.Variant(tick % 2 == 1, ua.VariantType.Boolean), 0,
                        tick % 2 == 1)
            await write(recipe, "recipe", ua.Variant(f"recipe-{tick}", ua.VariantType.String), 0,
                        f"recipe-{tick}")
            await write(arr, "arr1", ua.Variant([0.0, float(tick), 0.0], ua.VariantType.Double), 0,
                        float(tick))
            await write(ftemp, "ftemp", ua.Variant(tick * 0.1, ua.VariantType.Float), 0,
                        round(tick * 0.1, 1))
            await write(matrix, "matrix10",
                        ua.Variant([1.0, 2.0, float(tick * 10), 4.0], ua.VariantType.Double,
                                   Dimensions=[2, 2]), 0, float(tick * 10))
        await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
