"""Which machine a case ran on: a node's identity and host fingerprint.

A local run has one node, this host. A Ray run has as many as the cluster lent it, and
two of them may be the same host (several raylets on one machine, as in the tests), so a
Ray node's id carries the Ray node id beside the hostname.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from attnbench.core.environment import host_info, package_versions

# The part of a node's description each case record repeats; run.json's `nodes` holds the rest.
CASE_KEYS = ("id", "hostname", "fingerprint", "ray_node_id", "ip", "accelerators")


def host_fingerprint(host: dict[str, Any]) -> str:
    """A short digest of the host description: equal on identical machines, different otherwise."""
    blob = json.dumps(host, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def describe_node(
    ray_node_id: str | None = None, ip: str | None = None, accelerators: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """This process's machine: id, hostname, host fingerprint, packages (and Ray's view of it)."""
    host = host_info()
    node_id = host["hostname"] if ray_node_id is None else f"{host['hostname']}/{ray_node_id[:8]}"
    return {
        "id": node_id,
        "hostname": host["hostname"],
        "fingerprint": host_fingerprint(host),
        "ray_node_id": ray_node_id,
        "ip": ip,
        "accelerators": accelerators or {},
        "host": host,
        "packages": package_versions(),
    }


def case_node(node: dict[str, Any]) -> dict[str, Any]:
    """What a case record keeps of its node."""
    return {k: node.get(k) for k in CASE_KEYS}
