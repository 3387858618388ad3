"""Which network addresses the service connects to on a client's behalf (webhook receivers,
http(s) inputs): public ones. An IPv6 address that carries an IPv4 one (IPv4-mapped or
-compatible, NAT64, 6to4, Teredo) is judged by that IPv4 address too. Names are checked on what
they resolve to when a connection is made (`guarded_resolver`), so no later DNS answer slips past.
"""
from __future__ import annotations

import ipaddress
import socket

NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address in the last 32 bits
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local use, never public
LOOPBACK_NAMES = ("localhost",)  # RFC 6761: it and its subdomains are loopback, without DNS


class AddressRefused(OSError):
    """A connection to an address that is not public (raised where the name resolves)."""


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries, if any."""
    if ip.ipv4_mapped or ip.sixtofour:
        return ip.ipv4_mapped or ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):  # NAT64, IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if ip.is_global and not ip.is_multicast:
        return None
    return ("loopback" if ip.is_loopback else "link-local" if ip.is_link_local
            else "private" if ip.is_private else "non-public")


def refusal(address: str) -> str | None:
    """Why the service would not connect to `address` (None: it is public): `a loopback
    address`, `a private address`, ..."""
    ip = ipaddress.ip_address(address.split("%")[0])
    inner = embedded_ipv4(ip) if ip.version == 6 else None
    if ip.version == 6 and ip in LOCAL_NAT64:
        return "a non-public address"
    kind = (inner and _kind(inner)) or _kind(ip)
    return f"a {kind} address" if kind else None


def literal_address(host: str) -> str | None:
    """`host` as an address when it is one (a name: None)."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def host_refusal(host: str) -> str | None:
    """Why the service would not connect to `host`, known without DNS: an address that is not
    public, or a loopback name (`localhost`); None for other names, checked at connect time."""
    name = host.lower().rstrip(".")
    if any(name == loopback or name.endswith(f".{loopback}") for loopback in LOOPBACK_NAMES):
        return "a loopback address"
    address = literal_address(host)
    return refusal(address) if address else None


def guarded_resolver():
    """An aiohttp resolver that raises `AddressRefused` for a name that resolves to an address
    `refusal` refuses, checked when a connection is made. aiohttp does not resolve an address
    given as one: check those first (`host_refusal`)."""
    from aiohttp.abc import AbstractResolver
    from aiohttp.resolver import ThreadedResolver

    class GuardedResolver(AbstractResolver):
        def __init__(self):
            self.inner = ThreadedResolver()

        async def resolve(self, host, port=0, family=socket.AF_INET):
            found = await self.inner.resolve(host, port, family)
            for entry in found:
                why = refusal(entry["host"])
                if why:
                    raise AddressRefused(f"refused: {host} resolves to {why}")
            return found

        async def close(self):
            await self.inner.close()

    return GuardedResolver()
