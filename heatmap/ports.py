"""Listening ports that are already taken: one error naming the setting, checked up front.

A second server on a port fails deep inside grpc (a ``RuntimeError`` after a
C-core log line) or ``http.server`` (an ``OSError`` traceback), long after
the process has started connecting to Kafka. ``ensure_free`` probes every
port a command will listen on before anything starts, and ``PortInUse`` is a
``SettingsError``, so the command line prints it as one line and exits 2.
"""

from __future__ import annotations

import contextlib
import errno
import socket

from heatmap.settings import SettingsError


class PortInUse(SettingsError):
    def __init__(self, setting: str, host: str, port: int) -> None:
        self.setting = setting
        self.host = host
        self.port = port
        super().__init__(
            f"{setting}={port}: port in use on {host} (another process is listening there; "
            f"choose another port or stop that process)"
        )


def ensure_free(setting: str, host: str, port: int) -> None:
    """Raise ``PortInUse`` if a listener could not bind ``host:port`` now (0 = any port: fine).

    Binds the way the servers do (``SO_REUSEADDR``, which both grpc and
    ``http.server`` set), so connections lingering in TIME_WAIT do not count
    as taken; only another socket bound to the port does.
    """
    if port == 0:
        return
    address = host.strip("[]")  # grpc's form of an IPv6 literal: "[::]"
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUse(setting, host, port) from None
            why = e.strerror or str(e)
            raise SettingsError(f"{setting}={port}: cannot listen on {host} ({why})") from None
