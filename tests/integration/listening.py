"""Listening TCP sockets, read from /proc (Linux): on a port, or held by given processes."""

from __future__ import annotations

import os
from pathlib import Path

# 127.0.0.1, ::ffff:127.0.0.1 and ::1 as /proc/net/tcp{,6} write them.
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def _listeners() -> list[tuple[str, int, int]]:
    """(local address in hex, port, socket inode) of every listening TCP socket."""
    out = []
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():  # no IPv6
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            addr, hex_port = fields[1].split(":")
            if fields[3] == "0A":  # 0A: LISTEN
                out.append((addr, int(hex_port, 16), int(fields[9])))
    return out


def listen_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port`."""
    return {addr for addr, p, _ in _listeners() if p == port}


def process_listeners(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the listening sockets the process `pid` holds open."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:  # the process is gone
        return set()
    return {(addr, port) for addr, port, inode in _listeners() if inode in inodes}
