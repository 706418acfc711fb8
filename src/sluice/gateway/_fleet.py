"""What the admin API said of the fleet, applied to every pool's live replica set: the replicas it added (the
``admin`` source) and the ones it drained (cordons). Each gateway applies the shared directory's copy, so a change
made on one reaches all of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sluice.gateway._route import ModelRoute

AdminFleet = Mapping[str, Mapping[str, Mapping[str, Any]]]  # model -> replica URL -> {added, weight, cordoned}


def apply_admin_fleet(routes: Mapping[str, ModelRoute], fleet: AdminFleet) -> None:
    for name, route in routes.items():
        docs = fleet.get(name, {})
        added = {url: float(doc.get("weight", 1.0)) for url, doc in docs.items() if doc.get("added")}
        route.pool.replicas.sync("admin", list(added), list(added.values()))
        route.pool.replicas.cordon([url for url, doc in docs.items() if doc.get("cordoned")])
