"""Which network a multi-node job talks over: interfaces chosen, not guessed.

On a cluster node the default route often leads to a management network the other nodes cannot use
for bulk traffic, ``hostname`` may resolve to 127.0.0.1, and Ray, gloo and NCCL each guess their
interface their own way (ray#39672: "cannot find a local Raylet with the same address"). distgan picks
one :class:`Endpoint` per node instead — ``cluster.network_interface`` if set, else the interface the
kernel routes to the head (on the head: to the job's other nodes) — and hands the same choice to Ray
(``--node-ip-address``), gloo (``GLOO_SOCKET_IFNAME``) and NCCL (``NCCL_SOCKET_IFNAME``).

IPv4 only. Addresses come from ``ioctl(SIOCGIFADDR)`` (the interface's primary address); routes from
a UDP ``connect()``, which sends no packet. Nothing here needs iproute2.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from distgan.errors import UserError

SIOCGIFADDR = 0x8915  # <linux/sockios.h>: get an interface's (primary) IPv4 address
LOOPBACK = "lo"
# Where "the default route" points, asked without sending anything: TEST-NET-3 (RFC 5737) is never a
# real host, so the route to it is the default route (or none).
_DEFAULT_ROUTE_PROBE = "203.0.113.1"


class NetworkError(UserError):
    """A node cannot use the network it was told to use (one line: what, where, how to fix)."""


@dataclass(frozen=True)
class Endpoint:
    interface: str  # e.g. eth0, ib0
    address: str  # its IPv4 address, which the other nodes connect to

    def env(self) -> dict[str, str]:
        """The variables that make gloo and NCCL bind to this interface."""
        return {"GLOO_SOCKET_IFNAME": self.interface, "NCCL_SOCKET_IFNAME": self.interface}


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def interface_names() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def _ioctl_address(name: str) -> str | None:
    """The IPv4 address of ``name``; None if it has none; OSError(ENODEV) if there is no such interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                return None
            raise
    return socket.inet_ntoa(raw[20:24])


def interfaces() -> dict[str, str]:
    """``{interface: IPv4 address}`` for every interface of this node that has one."""
    found = {}
    for name in interface_names():
        try:
            address = _ioctl_address(name)
        except OSError:
            continue  # vanished meanwhile
        if address:
            found[name] = address
    return found


def _describe() -> str:
    return ", ".join(f"{n} {a}" for n, a in interfaces().items()) or "no interface with an IPv4 address"


def interface_address(name: str) -> str:
    """The IPv4 address of interface ``name``, or a :class:`NetworkError` naming what this node has."""
    try:
        address = _ioctl_address(name)
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.ENXIO):
            raise NetworkError(f"cluster.network_interface={name}: node {node_name()} has no interface {name!r} "
                               f"(it has: {_describe()})") from None
        raise
    if address is None:
        raise NetworkError(f"cluster.network_interface={name}: interface {name!r} on node {node_name()} has no "
                           f"IPv4 address (this node has: {_describe()})")
    return address


def resolve(host: str) -> str | None:
    """``host`` (name or address) as an IPv4 address, or None if it does not resolve."""
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except (OSError, IndexError):
        return None


def route_to(host: str) -> Endpoint | None:
    """The interface and source address the kernel uses to reach ``host``; None without a route."""
    address = resolve(host)
    if address is None:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((address, 9))  # UDP: picks the route, sends nothing
        except OSError:
            return None
        source = s.getsockname()[0]
    if source.startswith("127.") or address.startswith("127."):
        return Endpoint(LOOPBACK, source)
    for name, own in interfaces().items():
        if own == source:
            return Endpoint(name, source)
    return None  # a secondary address: no interface name to hand to gloo/NCCL, try the next peer


def choose(interface: str | None, peers: Iterable[str] = ()) -> Endpoint:
    """This node's endpoint: ``interface`` if given; else the one that routes to the first reachable
    of ``peers`` (the head, or the job's other nodes); else the default route's; else loopback."""
    if interface:
        return Endpoint(interface, interface_address(interface))
    for peer in [*peers, _DEFAULT_ROUTE_PROBE]:
        found = route_to(peer)
        if found is not None:
            return found
    return Endpoint(LOOPBACK, "127.0.0.1")


def wait_reachable(host: str, port: int, via: Endpoint, timeout_s: float, what: str = "the Ray head") -> None:
    """Connect to ``host:port`` from ``via.address`` until it answers; a :class:`NetworkError` naming the
    address and interface once ``timeout_s`` has passed (refused, unreachable and silent alike)."""
    deadline = time.monotonic() + timeout_s
    error: OSError | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with socket.create_connection((host, port), timeout=min(max(left, 0.1), 5.0),
                                          source_address=(via.address, 0)):
                return
        except OSError as e:
            error = e
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
    reason = (error.strerror or type(error).__name__) if error else "no answer"
    if isinstance(error, TimeoutError) or (error is not None and error.strerror is None):
        reason = "timed out"
    raise NetworkError(f"node {node_name()} cannot reach {what} at {host}:{port} via interface {via.interface} "
                       f"({via.address}) within {timeout_s:.0f} s ({reason}); set cluster.network_interface to the "
                       f"interface of the network the nodes share (this node has: {_describe()})")


def _hex_address(field: str) -> tuple[str, int]:
    """``/proc/net/tcp``'s ``0100007F:1F90`` as ``("127.0.0.1", 8080)``."""
    ip, port = field.split(":")
    return socket.inet_ntoa(struct.pack("<I", int(ip, 16))), int(port, 16)


def tcp_connections(pid: int | str = "self") -> set[tuple[str, int, str, int]]:
    """Established IPv4 TCP connections of process ``pid``: ``(local ip, port, remote ip, port)``."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "01" and fields[9] in inodes:  # 01 = ESTABLISHED
                found.add((*_hex_address(fields[1]), *_hex_address(fields[2])))
    return found


def gloo_endpoints() -> dict[str, list[str]]:
    """The addresses gloo really uses between this rank and its peers: the connections a fresh gloo group
    opens (the same device, hence the same interface, as the training's group). A collective: every
    rank of the default group must call it."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return {}
    before = tcp_connections()
    group = dist.new_group(backend="gloo")
    dist.barrier(group=group)
    opened = tcp_connections() - before
    dist.destroy_process_group(group)
    return {"gloo_local": sorted({f"{ip}" for ip, _, _, _ in opened}),
            "gloo_peers": sorted({f"{ip}" for _, _, ip, _ in opened})}


def free_port(candidates: Sequence[int] | None = None) -> int:
    """A TCP port nothing listens on: the kernel's choice, or the first free one of ``candidates``."""
    for port in candidates if candidates is not None else [0]:
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise NetworkError(f"no free TCP port among {list(candidates)} on node {node_name()} (cluster.port_range); "
                       "widen the range or free the ports")


# The ports a Ray node listens on (``ray start`` flags). The head adds the GCS and the Ray client server.
HEAD_PORTS = ("--port", "--ray-client-server-port")
NODE_PORTS = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
              "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port")
SERVICE_SLOTS = len(HEAD_PORTS) + len(NODE_PORTS)


def port_block(port_range: str, index: int, count: int) -> range:
    """Node ``index`` of ``count``'s share of ``cluster.port_range`` ("LO-HI"): equal consecutive slices,
    so nodes that share a host (as on the local test cluster) never compete for a port."""
    lo, hi = (int(p) for p in port_range.split("-"))
    size = (hi - lo + 1) // count
    return range(lo + index * size, lo + (index + 1) * size)


def ray_ports(port_range: str | None, index: int, count: int, head: bool) -> dict[str, int]:
    """``{ray start flag: port}`` for this node. Without a range: free ports the kernel picks (and Ray's
    default worker ports). With one: the services take the first free ports of this node's slice, Ray's
    worker processes the rest (``--min-worker-port``/``--max-worker-port``)."""
    names = (HEAD_PORTS if head else ()) + NODE_PORTS
    if not port_range:
        return {name: free_port() for name in names}
    block = port_block(port_range, index, count)
    ports: dict[str, int] = {}
    for name in names:
        ports[name] = free_port([p for p in block[:SERVICE_SLOTS] if p not in ports.values()])
    ports["--min-worker-port"], ports["--max-worker-port"] = block[SERVICE_SLOTS], block[-1]
    return ports


def port_flags(ports: dict[str, int]) -> list[str]:
    return [item for name, port in ports.items() for item in (name, str(port))]
