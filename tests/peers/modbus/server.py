#!/usr/bin/env python3
"""Modbus test server for streamgate's modbus tests (pymodbus 3.16 simulator API).

Usage: server.py (--tcp PORT | --rtu DEVICE [--baud N --parity N|E|O --stopbits 1|2])
                 --spec SPEC.json [--counts COUNTS.json]

SPEC.json: {"devices": [{"id": 1, "size": 200, "values": [
    {"area": "holding_register", "address": 10, "type": "f32", "order": "CDAB", "value": 1.5},
    {"area": "coil", "address": 3, "type": "bool", "value": true},
    {"area": "input_register", "address": 0, "type": "string", "registers": 4, "value": "AB"}, ...]}]}
Every area of a device is a dense block of `size` registers/bits starting at address 0 (all
valid, zero unless set), so reading at or past `size` gets an IllegalAddress exception.
Values are encoded here with Python's struct module, independently of streamgate's decoder:
"ABCD" is big-endian; CDAB swaps the 16-bit words; BADC swaps the bytes within each word;
DCBA is fully little-endian.
Every request is counted per device and function code; the counts are rewritten to COUNTS.json
after each request ({"1": {"3": 2, "1": 1}}).
A device may list "ramps": [{"area": "holding_register", "address": 5, "step": 3}]: each such
register grows by `step` (mod 65536) on every read request of its area, through the simulator's
action callback, so tests see values change at runtime.
A device may list "holes": [{"area": "holding_register", "from": 10, "to": 19}] (register areas
only, inclusive): those addresses do not exist (IllegalAddress), as on devices with a sparse map.
Prints "READY" on stdout once it serves.
"""

import argparse
import asyncio
import json
import struct
import sys

from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

FORMATS = {"u16": "H", "i16": "h", "u32": "I", "i32": "i", "u64": "Q", "i64": "q", "f32": "f", "f64": "d"}


def encode(v):
    """Registers (list of u16) of one spec value."""
    t = v["type"]
    if t == "string":
        n = v["registers"]
        raw = v["value"].encode("utf-8").ljust(2 * n, b"\0")[: 2 * n]
    elif t == "bits":  # raw register given as an int
        return [v["value"] & 0xFFFF]
    else:
        raw = struct.pack(">" + FORMATS[t], v["value"])
        order = v.get("order", "ABCD")
        words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
        if order in ("CDAB", "DCBA"):
            words.reverse()
        if order in ("BADC", "DCBA"):
            words = [w[::-1] for w in words]
        raw = b"".join(words)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def build(dev, counts, counts_path):
    size = dev.get("size", 200)
    areas = {a: [0] * size for a in ("coil", "discrete_input", "holding_register", "input_register")}
    for v in dev.get("values", []):
        block = areas[v["area"]]
        if v["area"] in ("coil", "discrete_input"):
            block[v["address"]] = 1 if v["value"] else 0
        else:
            regs = encode(v)
            block[v["address"] : v["address"] + len(regs)] = regs
    dev_counts = counts.setdefault(str(dev["id"]), {})

    ramps = dev.get("ramps", [])
    area_fc = {"coil": 1, "discrete_input": 2, "holding_register": 3, "input_register": 4}

    async def action(function_code, start, _address, _count, regs, _set_values):
        for r in ramps:
            i = r["address"] - start
            if area_fc[r["area"]] == function_code and 0 <= i < len(regs):
                regs[i] = (regs[i] + r.get("step", 1)) % 65536
        key = str(function_code)
        dev_counts[key] = dev_counts.get(key, 0) + 1
        if counts_path:
            with open(counts_path + ".tmp", "w") as f:
                json.dump(counts, f)
            import os

            os.replace(counts_path + ".tmp", counts_path)
        return None

    bits = lambda name: [SimData(0, values=[bool(b) for b in areas[name]], datatype=DataType.BITS)]
    def regs(name):
        gone = set()
        for h in dev.get("holes", []):
            if h["area"] == name:
                gone.update(range(h["from"], h["to"] + 1))
        blocks, start = [], None
        for a in range(size + 1):
            if a < size and a not in gone:
                start = a if start is None else start
            elif start is not None:
                blocks.append(SimData(start, values=areas[name][start:a], datatype=DataType.REGISTERS))
                start = None
        return blocks

    simdata = (bits("coil"), bits("discrete_input"), regs("holding_register"), regs("input_register"))
    return SimDevice(id=dev["id"], simdata=simdata, action=action)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tcp", type=int)
    p.add_argument("--rtu")
    p.add_argument("--baud", type=int, default=19200)
    p.add_argument("--parity", default="N")
    p.add_argument("--stopbits", type=int, default=1)
    p.add_argument("--spec", required=True)
    p.add_argument("--counts")
    a = p.parse_args()
    with open(a.spec) as f:
        spec = json.load(f)
    counts = {}
    devices = [build(d, counts, a.counts) for d in spec["devices"]]
    if a.tcp is not None:
        server = ModbusTcpServer(devices, address=("127.0.0.1", a.tcp))
    else:
        server = ModbusSerialServer(
            devices, port=a.rtu, baudrate=a.baud, parity=a.parity, stopbits=a.stopbits
        )
    task = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0.3)
    print("READY", flush=True)
    await task


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
