"""Which addresses the server may download a provider's output from.

A provider's output URL is chosen by whoever owns the model a user names, so it may
point anywhere: at the app's own host (127.0.0.1), the LAN, a cloud metadata service
(169.254.169.254), or a name that resolves there. Only public unicast addresses are
fetched; the operator lists the exceptions (a self-hosted, Replicate-compatible server
on a private address) in `ATELIER_FETCH_ALLOW_HOSTS`.

The check is on the address actually connected to (see `guarded_fetch`), so whatever
form the URL wrote the host in (`2130706433`, `0x7f.1`, `[::ffff:127.0.0.1]`, a name),
what decides is the IP address the resolver gave.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 5

# Spelled out rather than left to `is_global` alone: Python versions disagree on some
# ranges, and multicast counts as "global" there.
_BLOCKED_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",  # private (RFC 1918)
        "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255
    )
)
_BLOCKED_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::/96",  # IPv4-compatible (deprecated)
        "100::/64",  # discard
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4, Teredo), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public(address: IPAddress) -> bool:
    """True for a public unicast address; False for everything a server keeps inside."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return False
        if address.ipv4_mapped is not None:  # on the wire this is the IPv4 address
            return is_public(address.ipv4_mapped)
        inner = embedded_ipv4(address)
        if inner is not None and not is_public(inner):
            return False
        blocked: tuple[IPNetwork, ...] = _BLOCKED_V6
    else:
        blocked = _BLOCKED_V4
    if any(address in network for network in blocked):
        return False
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


@dataclass(frozen=True)
class AllowEntry:
    """One operator exception: a host name, an address or a network, maybe one port."""

    host: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    def matches(self, host: str, port: int, address: IPAddress) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return _unmapped(address) in self.network
        return self.host == _normal_host(host)


@dataclass(frozen=True)
class FetchPolicy:
    """Where downloads may go, how many redirects, and how long the whole may take."""

    allow: tuple[AllowEntry, ...] = ()
    max_redirects: int = MAX_REDIRECTS
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0

    @classmethod
    def from_setting(cls, text: str | None, **limits: float) -> FetchPolicy:
        """From `ATELIER_FETCH_ALLOW_HOSTS`: comma-separated host[:port], IP[:port] or CIDR."""
        return cls(allow=parse_allow_list(text or ""), **limits)  # type: ignore[arg-type]

    def permits(self, host: str, port: int, address: IPAddress) -> bool:
        """May a connection for `host:port` go to `address`?"""
        if any(entry.matches(host, port, address) for entry in self.allow):
            return True
        return is_public(address)


def parse_allow_list(text: str) -> tuple[AllowEntry, ...]:
    """Parse the setting; a bad entry raises ValueError naming it."""
    return tuple(_parse_entry(item.strip()) for item in text.split(",") if item.strip())


def _parse_entry(item: str) -> AllowEntry:
    if "://" in item:
        raise ValueError(f"{item!r} is a URL; give host[:port], an address or a network")
    if "/" in item:
        try:
            return AllowEntry(network=ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network like 10.0.0.0/8") from None
    host, port = item, None
    if item.startswith("["):  # [v6] or [v6]:port
        inside, _, rest = item[1:].partition("]")
        host = inside
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{item!r} is not [address]:port")
            port = _port(rest[1:], item)
    elif item.count(":") == 1:
        host, _, raw = item.partition(":")
        port = _port(raw, item)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = _normal_host(host)
        if not name or any(c in name for c in " /@?#[]:"):
            raise ValueError(f"{item!r} is not a host, host:port, address or network") from None
        return AllowEntry(host=name, port=port)
    single = ipaddress.ip_network(f"{_unmapped(address)}")
    return AllowEntry(network=single, port=port)


def _port(raw: str, item: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{item!r} has no valid port")
    return int(raw)


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
