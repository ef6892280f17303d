"""Telling systemd how the server is: READY=1, RELOADING=1, STOPPING=1 and STATUS= lines for
units of Type=notify or Type=notify-reload (the role picks one), and WATCHDOG=1 keep-alives when
the unit sets WatchdogSec= (sd_watchdog_enabled(3): $WATCHDOG_USEC, for $WATCHDOG_PID)."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("appliance.serve")


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 keep-alives (half the unit's WatchdogSec=, as sd_watchdog_enabled(3)
    advises), or None when systemd watches no process, or another one."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2_000_000


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
