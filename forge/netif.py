"""Which network interface carries this node's Ray address, so gloo never falls back to loopback.

gloo picks its address by resolving the hostname; on many hosts (and in every container whose
/etc/hosts maps the hostname to 127.0.0.1) that is loopback, and a torch.distributed group that
spans two nodes then advertises 127.0.0.1 to its peers. `setup_worker` runs in every Ray worker
process of a Forge job (`worker_process_setup_hook`) and sets GLOO_SOCKET_IFNAME to the interface
that holds the node's Ray address, unless the user set it. Both the trainer's groups and the
engines' weight-update group are created in such processes.
"""

from __future__ import annotations

import logging
import os
import socket

import psutil

from forge.ground.net import is_loopback

log = logging.getLogger("forge")


def interface_for(ip: str) -> str | None:
    """The name of the interface that holds address `ip`, or None."""
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6) and a.address.split("%")[0] == ip:
                return name
    return None


def setup_worker() -> None:
    """Ray worker_process_setup_hook: pin gloo to the interface of this node's Ray address."""
    if os.environ.get("GLOO_SOCKET_IFNAME"):
        return
    import ray

    try:
        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - no Ray node address: leave gloo's default
        return
    if is_loopback(ip):
        return
    name = interface_for(ip)
    if name:
        os.environ["GLOO_SOCKET_IFNAME"] = name
