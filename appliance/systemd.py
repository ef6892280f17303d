"""Telling systemd how the server is: READY=1, RELOADING=1, STOPPING=1 and STATUS= lines for
units of Type=notify or Type=notify-reload (the role picks one)."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("appliance.serve")


class SystemdNotifier:
    """sd_notify(3) without libsystemd: a datagram to $NOTIFY_SOCKET, when there is one."""

    def __init__(self) -> None:
        self._address = os.environ.get("NOTIFY_SOCKET")

    def notify(self, *fields: str) -> None:
        if not self._address:
            return
        address = self._address
        if address.startswith("@"):  # an abstract socket (sd_notify(3))
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), address)
        except OSError as error:
            log.warning("sd_notify failed error=%s", error)
