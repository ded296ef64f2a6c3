"""Where upstreams come from: the config, a file re-read on change, DNS names.

A DNS name that resolves to several addresses (a Kubernetes headless Service) becomes one
target per address, re-resolved every ``dns_refresh_s``. An optional hosts(5)-format
file is consulted before DNS (static overrides, as Docker's ``extra_hosts``); tests use it
to give a name several loopback addresses without touching any DNS server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import Awaitable, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import yaml

from babeldesk.config import UpstreamConfig, parse_upstreams
from babeldesk.errors import ConfigError
from babeldesk.fleet.pool import Target

log = logging.getLogger(__name__)

Resolve = Callable[[str, int], Awaitable[list[str]]]  # (host, port) -> addresses


def read_upstreams_file(path: str | os.PathLike[str]) -> tuple[UpstreamConfig, ...]:
    """A YAML list of upstreams (bare urls or mappings), or ``{upstreams: [...]}``."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("fleet.upstreams_file", f"{p}: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("upstreams")
    if data is None:
        return ()
    if not isinstance(data, list):
        raise ConfigError("fleet.upstreams_file", f"{p}: must be a list of upstreams")
    return parse_upstreams(data, key="fleet.upstreams_file")


def parse_hosts(text: str) -> dict[str, list[str]]:
    """hosts(5) text -> {name: [address, ...]} in file order; a name may repeat."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        addr, names = fields[0], fields[1:]
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            continue
        for name in names:
            addrs = out.setdefault(name.lower(), [])
            if addr not in addrs:
                addrs.append(addr)
    return out


class Resolver:
    """(host, port) -> addresses: the hosts file first (re-read each time), then the
    system resolver (``getaddrinfo``, which reads /etc/hosts and DNS)."""

    def __init__(self, hosts_file: str = "") -> None:
        self.hosts_file = hosts_file

    async def __call__(self, host: str, port: int) -> list[str]:
        if self.hosts_file:
            try:
                text = Path(self.hosts_file).read_text(encoding="utf-8")
            except OSError as exc:
                log.warning("fleet: hosts file %s unreadable: %s", self.hosts_file, exc)
            else:
                found = parse_hosts(text).get(host.lower())
                if found:
                    return found
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM)
        addrs: list[str] = []
        for *_, sockaddr in infos:
            addr = str(sockaddr[0])
            if addr not in addrs:
                addrs.append(addr)
        return addrs


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _base(scheme: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


async def expand(
    specs: Sequence[UpstreamConfig],
    resolve: Resolve,
    previous: Mapping[str, list[Target]] | None = None,
) -> dict[str, list[Target]]:
    """{configured url: its targets}. An IP url or an https url (TLS needs the name) is
    one target; a name gives one target per address. A name that fails to resolve keeps
    its ``previous`` targets (a DNS blip must not empty the fleet), or stays unresolved."""
    previous = previous or {}
    out: dict[str, list[Target]] = {}
    for spec in specs:
        parts = urlsplit(spec.url.rstrip("/"))
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        single = [Target(_base(parts.scheme, host, port), spec.url, spec.weight, spec.backup)]
        if parts.scheme == "https" or _is_ip(host):
            out[spec.url] = single
            continue
        try:
            addrs = await resolve(host, port)
        except OSError as exc:
            log.warning("fleet: cannot resolve %s: %s", host, exc)
            addrs = []
        if not addrs:
            out[spec.url] = [
                Target(t.name, spec.url, spec.weight, spec.backup, t.host_header)
                for t in previous.get(spec.url, single)]
            continue
        out[spec.url] = [
            Target(_base(parts.scheme, a, port), spec.url, spec.weight, spec.backup,
                   host_header=f"{host}:{port}")
            for a in addrs]
    return out


def flatten(expanded: Mapping[str, list[Target]]) -> list[Target]:
    """All targets; an address reached through two configured urls is kept once (first)."""
    seen: dict[str, Target] = {}
    for targets in expanded.values():
        for t in targets:
            seen.setdefault(t.name, t)
    return list(seen.values())


class FileWatch:
    """Tells whether a file changed since the last look (mtime, size, inode)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None

    def changed(self) -> bool:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = (-1, -1, -1)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True
