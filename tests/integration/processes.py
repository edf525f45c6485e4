"""Processes and sockets of the subprocesses the integration tests start (from /proc)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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
    """Local addresses of the sockets listening on `port` (hex, as in /proc/net/tcp)."""
    return {addr for addr, p, _ in _listeners() if p == port}


def process_listeners(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the listening sockets the process `pid` holds open."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:  # the process is gone
        return set()
    return {(addr, port) for addr, port, inode in _listeners() if inode in inodes}


def session_pids(sid: int) -> list[int]:
    """PIDs of the processes in session `sid` (the one our `ray start` leads).

    Ray's workers get process groups of their own, and are re-parented to init once the raylet
    is gone, but they stay in the session: this finds all of them and nothing else.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp session ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def signal_session(sid: int, sig: signal.Signals) -> None:
    for pid in session_pids(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_session(sid: int) -> None:
    """SIGTERM every process of the session, then SIGKILL what is left after 15 s."""
    signal_session(sid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and session_pids(sid):
        time.sleep(0.5)
    signal_session(sid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and session_pids(sid):
        time.sleep(0.2)
