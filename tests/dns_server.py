"""A tiny authoritative DNS server on loopback, for client-side load-balancing tests: A records from a
mapping the test changes while it runs (TTL 0), NOERROR with no answers for other types (AAAA, TXT, SRV),
NXDOMAIN for unknown names. gRPC's c-ares resolver queries it through `dns://127.0.0.1:PORT/NAME:PORT`."""

from __future__ import annotations

import socket
import struct
import threading

A, IN = 1, 1


def _question_end(packet: bytes, offset: int) -> tuple[str, int]:
    labels = []
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1: offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    return ".".join(labels).lower(), offset + 1


class DnsServer:
    """`records[name] = [ip, ...]` answers A queries for `name` (lower case, no trailing dot)."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.queries = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns", daemon=True)

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                packet, peer = self._sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            if len(packet) >= 12:
                self._sock.sendto(self.answer(packet), peer)

    def answer(self, packet: bytes) -> bytes:
        self.queries += 1
        (query_id,) = struct.unpack("!H", packet[:2])
        name, offset = _question_end(packet, 12)
        qtype, _qclass = struct.unpack("!HH", packet[offset: offset + 4])
        question = packet[12: offset + 4]
        ips = self.records.get(name.rstrip("."))
        answers = b""
        if ips is not None and qtype == A:
            for ip in ips:
                answers += struct.pack("!HHHIH", 0xC00C, A, IN, 0, 4) + socket.inet_aton(ip)
        rcode = 3 if ips is None else 0  # NXDOMAIN for names it does not know
        flags = 0x8400 | 0x0100 | rcode  # response, authoritative, recursion desired copied, rcode
        count = len(ips) if ips is not None and qtype == A else 0
        return struct.pack("!HHHHHH", query_id, flags, 1, count, 0, 0) + question + answers
