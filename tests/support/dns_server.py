"""A DNS server of the tests' own, on loopback: real UDP in dnspython's wire format. The appliance's
resolver is pointed at it (`[outbound] resolver`, a directory's discovery), so the answers the
Internet would give are the tests' own."""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DNSServer:
    """Answers from `records`: {("name", "MX"): ["10 mx1.remote.test."], ...}. A name with no
    records of any type is NXDOMAIN; names in `servfail` get SERVFAIL."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.servfail: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self.ttl = 60  # of every answer
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.port = int(self._socket.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, name: str, kind: str, *values: str) -> None:
        self.records.setdefault((name.lower().rstrip("."), kind.upper()), []).extend(values)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._socket.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            kind = dns.rdatatype.to_text(question.rdtype)
            self.queries.append((name, kind))
            values = self.records.get((name, kind))
            if name in self.servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
            elif values:
                response.answer.append(dns.rrset.from_text_list(question.name, self.ttl, "IN", kind, values))
            elif not any(known == name for known, _ in self.records):
                response.set_rcode(dns.rcode.NXDOMAIN)
            self._socket.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._socket.close()
