"""The harness's network: a bridge on this machine and one network namespace per node.

Every node (container, in compose) gets an address of its own on the bridge, so traffic
between Ray nodes crosses veth links as it crosses a network between hosts. Its /etc/hosts
(`ip netns exec` mounts /etc/netns/<name>/hosts over /etc/hosts) names the other nodes as
compose's DNS does (its resolv.conf names no reachable server), and names this machine's host
name as the node itself, which is what a container's `hostname` resolves to. Only root can do
this.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

BRIDGE = "gradreg0"
PREFIX = "10.77.0"
HOST_ADDRESS = f"{PREFIX}.1"  # this machine on the bridge: the PostgreSQL forwarder
NETNS_ETC = Path("/etc/netns")


@dataclass(frozen=True)
class Node:
    name: str  # the namespace, gradreg-<role>
    address: str
    aliases: tuple[str, ...]  # compose service names that resolve to it

    @property
    def prefix(self) -> tuple[str, ...]:
        """The command prefix that runs a program on this node."""
        return ("ip", "netns", "exec", self.name)

    @property
    def veth(self) -> str:
        return f"gr-{self.name.removeprefix('gradreg-')}"[:15]


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionError(
            "the local cluster gives each node a network namespace, which needs root "
            "(ip netns, veth and a bridge); run make cluster-up as root"
        )


def create(nodes: list[Node], host_aliases: tuple[str, ...]) -> None:
    """The bridge, every node's namespace and link, and every node's /etc/hosts."""
    require_root()
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{HOST_ADDRESS}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    hosts = [f"{HOST_ADDRESS} {' '.join(host_aliases)}"]
    hosts += [f"{node.address} {' '.join(node.aliases)}" for node in nodes]
    for node in nodes:
        _ip("netns", "add", node.name)
        _ip("link", "add", node.veth, "type", "veth", "peer", "name", "eth0", "netns", node.name)
        _ip("link", "set", node.veth, "master", BRIDGE, "up")
        inside = ("netns", "exec", node.name, "ip")
        _ip(*inside, "addr", "add", f"{node.address}/24", "dev", "eth0")
        _ip(*inside, "link", "set", "eth0", "up")
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "route", "add", "default", "via", HOST_ADDRESS)
        etc = NETNS_ETC / node.name
        etc.mkdir(parents=True, exist_ok=True)
        own = f"{node.address} {socket.gethostname()}"
        (etc / "hosts").write_text("\n".join(["127.0.0.1 localhost", own, *hosts]) + "\n")
        # No DNS server inside: a name /etc/hosts lacks (or its IPv6 half, which every
        # getaddrinfo asks for too) fails at once, as compose's resolver answers it, instead of
        # waiting on this machine's nameserver, which a node cannot reach.
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")


def link(node: Node, up: bool) -> None:
    """Take a node's link down (it drops off the network without a word) or up again."""
    _ip("link", "set", node.veth, "up" if up else "down")


def pids(node: Node) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", node.name], capture_output=True, text=True)
    return [int(pid) for pid in done.stdout.split()]


def remove(nodes: list[Node]) -> None:
    """Undo `create`; what is already gone is skipped."""
    for node in nodes:
        subprocess.run(["ip", "link", "del", node.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", node.name], capture_output=True)
        shutil.rmtree(NETNS_ETC / node.name, ignore_errors=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
