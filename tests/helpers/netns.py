"""A test host of the tests' own: a network namespace joined to this machine by veth links.

`link(name)` gives a point-to-point link (host side `.1`, test host side `.2` of a /30 in
10.231.N.0); `black_hole(name)` takes the host side down, so whatever the test host sends over
that link is dropped without a word, as on a network that lost its route, while its other
links keep working. Only root can make one; the addresses exist only between the two ends.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class TestHost:
    __test__ = False  # not a pytest test class
    name: str
    links: dict[str, int] = field(default_factory=dict)

    def __enter__(self) -> TestHost:
        _ip("netns", "add", self.name)
        _ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        for link in self.links:
            subprocess.run(["ip", "link", "del", self._host_side(link)], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    @property
    def run(self) -> tuple[str, ...]:
        """The command prefix that runs a program on the test host."""
        return ("ip", "netns", "exec", self.name)

    def link(self, link: str) -> tuple[str, str]:
        """(this machine's address, the test host's address) on a new link."""
        number = len(self.links) + 1
        self.links[link] = number
        host_side, ns_side = self._host_side(link), f"{self.name[:8]}-{link[:4]}n"
        _ip("link", "add", host_side, "type", "veth", "peer", "name", ns_side)
        _ip("link", "set", ns_side, "netns", self.name)
        _ip("addr", "add", f"10.231.{number}.1/30", "dev", host_side)
        _ip("link", "set", host_side, "up")
        _ip(
            "netns", "exec", self.name, "ip", "addr", "add", f"10.231.{number}.2/30", "dev", ns_side
        )
        _ip("netns", "exec", self.name, "ip", "link", "set", ns_side, "up")
        return f"10.231.{number}.1", f"10.231.{number}.2"

    def black_hole(self, link: str) -> None:
        _ip("link", "set", self._host_side(link), "down")

    def restore(self, link: str) -> None:
        _ip("link", "set", self._host_side(link), "up")

    def _host_side(self, link: str) -> str:
        return f"{self.name[:8]}-{link[:4]}h"
