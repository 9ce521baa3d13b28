"""mDNS advertisement of a Wyoming server (`_wyoming._tcp.local.`) for Home Assistant discovery.

Home Assistant keys its config entries on the instance name, so the ASR and the TTS server need
distinct, stable names (`qwen-asr-<host>`, `qwen-tts-<host>`). The advertised address is a real address
of this host, never 0.0.0.0: the bind address when it is specific, else the address of the interface
that routes to the mDNS group, else `--zeroconf-address`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import List, Optional

_LOGGER = logging.getLogger(__name__)
SERVICE_TYPE = "_wyoming._tcp.local."
MDNS_GROUP = "224.0.0.251"


class ZeroconfMissing(RuntimeError):
    pass


def default_name(kind: str) -> str:
    host = socket.gethostname().split(".")[0] or "host"
    return f"qwen-{kind}-{host}"


def advertised_address(bind_host: Optional[str], explicit: Optional[str] = None) -> str:
    if explicit:
        return explicit
    if bind_host and bind_host not in ("0.0.0.0", "::", ""):
        try:
            return str(ipaddress.ip_address(bind_host))
        except ValueError:
            return socket.gethostbyname(bind_host)
    # the source address towards the mDNS group; a UDP connect sends nothing
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.setblocking(False)
            probe.connect((MDNS_GROUP, 1))
            address = probe.getsockname()[0]
    except OSError as err:
        raise ValueError(f"Cannot detect this host's address ({err}); set --zeroconf-address") from err
    if address.startswith("0."):
        raise ValueError("Cannot detect this host's address; set --zeroconf-address")
    return address


class ZeroconfAdvertiser:
    def __init__(self, name: str, port: int, address: str, interfaces: Optional[List[str]] = None) -> None:
        try:
            from zeroconf import IPVersion  # noqa: F401
            from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf  # noqa: F401
        except ImportError as err:
            raise ZeroconfMissing(
                "--zeroconf needs the zeroconf package: pip install 'wyoming-qwen[zeroconf]'"
            ) from err
        if address in ("0.0.0.0", "::"):
            raise ValueError("Refusing to advertise 0.0.0.0; set --zeroconf-address")
        self.name, self.port, self.address = name, port, address
        self.interfaces = interfaces
        self._zeroconf = None

    async def start(self) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        kwargs = {"interfaces": self.interfaces} if self.interfaces else {}
        self._zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only, **kwargs)
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self.name}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(self.address)],
            port=self.port,
        )
        await self._zeroconf.async_register_service(info)
        _LOGGER.info("Advertising %s at %s:%s over mDNS", self.name, self.address, self.port)

    async def stop(self) -> None:
        if self._zeroconf is not None:
            await self._zeroconf.async_close()
            self._zeroconf = None


def advertiser_from_args(args, kind: str) -> Optional[ZeroconfAdvertiser]:
    """The advertiser `--zeroconf` asks for (TCP only), or None."""
    if args.zeroconf is None:
        return None
    from urllib.parse import urlparse

    uri = urlparse(args.uri)
    if uri.scheme != "tcp":
        raise ValueError("--zeroconf needs a tcp:// --uri")
    return ZeroconfAdvertiser(
        name=args.zeroconf or default_name(kind),
        port=uri.port,
        address=advertised_address(uri.hostname, args.zeroconf_address),
        interfaces=args.zeroconf_interface,
    )
