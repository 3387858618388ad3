"""The address guard, without Ray: public addresses pass; loopback, link-local and private ones
are refused, also when an IPv6 address carries them (IPv4-mapped or -compatible, NAT64, 6to4,
Teredo)."""
from __future__ import annotations

import pytest

from raydemucs.core.addresses import host_refusal, refusal


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("169.254.169.254", "link-local"),
    ("10.0.0.1", "private"), ("::ffff:127.0.0.1", "loopback"),
    ("::127.0.0.1", "loopback"), ("::10.0.0.1", "private"),
    ("64:ff9b::7f00:1", "loopback"), ("64:ff9b::a9fe:a9fe", "link-local"),
    ("64:ff9b:1::808:808", "non-public"), ("2002:7f00:1::", "loopback"),
    ("2002:c0a8:101::1", "private"), ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),
    ("fe80::1%eth0", "link-local"), ("0.0.0.0", "private"),
])
def test_addresses_that_are_not_public_are_refused(address, kind):
    assert refusal(address) == f"a {kind} address"


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::1111", "64:ff9b::808:808",
                                     "2002:808:808::"])
def test_public_addresses_pass(address):
    assert refusal(address) is None


def test_hosts_known_without_dns():
    assert host_refusal("[::127.0.0.1]") == "a loopback address"
    assert host_refusal("LocalHost.") == host_refusal("api.localhost") == "a loopback address"
    assert host_refusal("example.com") is None and host_refusal("notlocalhost") is None
