#!/usr/bin/env python3
"""A real S7 peer for the S7 reader tests: python-snap7 3.x's pure-Python snap7.server.Server
on 127.0.0.1, driven through stdin/stdout so a test can change values while it serves and
count the read-var jobs it answered.

    server.py PORT [AREA:INDEX:OFFSET:HEX ...]   (initial values, written before it serves)
prints `ready PORT` once listening, then answers one line per command:
    set AREA INDEX OFFSET HEX   write bytes (AREA: db, mk, pe, pa; INDEX: DB number or 0) -> ok
    get AREA INDEX OFFSET LEN   read bytes -> data HEX
    count                       read-var jobs answered so far -> count N
    reset                       zero the counter -> ok
Areas registered: DB1 (512 bytes), DB2 (64 bytes), DB3 (8192 bytes), merkers, inputs, outputs (256 bytes each).
DB99 is not registered: reading it gets the item return code 0x0A (object does not exist).
"""

import logging
import sys
import threading

from snap7.datatypes import S7Area
from snap7.server import Server
from snap7.type import SrvArea

AREAS = {"db": S7Area.DB, "mk": S7Area.MK, "pe": S7Area.PE, "pa": S7Area.PA}


class CountingServer(Server):
    """Counts read-var jobs (one per request, whatever its item count)."""

    def __init__(self):
        super().__init__(log=False)
        self.read_jobs = 0
        self.count_lock = threading.Lock()

    def _handle_read_area(self, request, client_address):
        with self.count_lock:
            self.read_jobs += 1
        return super()._handle_read_area(request, client_address)


def main():
    logging.basicConfig(level=logging.CRITICAL)
    port = int(sys.argv[1])
    server = CountingServer()
    server.register_area(SrvArea.DB, 1, bytearray(512))
    server.register_area(SrvArea.DB, 2, bytearray(64))
    server.register_area(SrvArea.DB, 3, bytearray(8192))
    server.register_area(SrvArea.MK, 0, bytearray(256))
    server.register_area(SrvArea.PE, 0, bytearray(256))
    server.register_area(SrvArea.PA, 0, bytearray(256))
    # Initial values before serving: AREA:INDEX:OFFSET:HEX arguments.
    for arg in sys.argv[2:]:
        area, index, offset, data = arg.split(":")
        key, offset = (AREAS[area], int(index)), int(offset)
        server.memory_areas[key][offset : offset + len(data) // 2] = bytes.fromhex(data)
    server.start_to("127.0.0.1", port)
    print(f"ready {port}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "set" and len(words) == 5:
            key = (AREAS[words[1]], int(words[2]))
            offset = int(words[3])
            data = bytes.fromhex(words[4])
            with server.area_locks[key]:
                server.memory_areas[key][offset : offset + len(data)] = data
            print("ok", flush=True)
        elif words[0] == "get" and len(words) == 5:
            key = (AREAS[words[1]], int(words[2]))
            offset, size = int(words[3]), int(words[4])
            with server.area_locks[key]:
                data = bytes(server.memory_areas[key][offset : offset + size])
            print(f"data {data.hex()}", flush=True)
        elif words[0] == "count":
            with server.count_lock:
                print(f"count {server.read_jobs}", flush=True)
        elif words[0] == "reset":
            with server.count_lock:
                server.read_jobs = 0
            print("ok", flush=True)
        else:
            print(f"error unknown command {line.strip()}", flush=True)
    server.stop()


if __name__ == "__main__":
    main()
