"""Multi-tenant load for a service behind rollout-proxy.

Each simulated user belongs to one tenant. Tenants come in three tiers (enterprise, internal,
free) and their sizes follow a Zipf-like law: a few large tenants send most of the traffic, a
long tail of small ones sends the rest, as in most multi-tenant products. Every request carries
the tenant id in a header (``X-Tenant-ID`` by default), so the proxy routes each tenant to the
same side of the rollout on every request.

Bounded headless run (see loadtests/README.md)::

    locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 30s --host http://127.0.0.1:8080

Options added to locust's own: ``--tenants``, ``--zipf-s``, ``--tenant-header``,
``--tier-header`` and ``--tenant-seed``. Tenant ids are ``ent-001``, ``int-001``,
``free-0001``..., so a proxy config can name them in ``tiers.tenants``.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

from locust import HttpUser, between, events, task

TIERS = (("enterprise", "ent", 0.04), ("internal", "int", 0.01))  # tier, prefix, share of tenants
ITEM_IDS = 5000


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant, its tier, and how much traffic it sends relative to the others."""

    name: str
    tier: str
    weight: float


def add_options(parser: Any) -> None:
    """Tenant options, added to locust's command line."""
    group = parser.add_argument_group("rollout-proxy tenants")
    group.add_argument("--tenants", type=int, default=500, help="number of tenants")
    group.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent of tenant size")
    group.add_argument("--tenant-header", default="X-Tenant-ID", help="header with the tenant id")
    group.add_argument(
        "--tier-header", default="", help="also send the tier in this header (off when empty)"
    )
    group.add_argument("--tenant-seed", type=int, default=2026, help="seed for tenant sizes")


events.init_command_line_parser.add_listener(add_options)  # type: ignore[no-untyped-call]


def build_tenants(count: int, zipf_s: float, seed: int) -> list[Tenant]:
    """Tenants in random rank order: rank r sends traffic in proportion to 1 / r**zipf_s."""
    rng = random.Random(seed)
    names: list[tuple[str, str]] = []
    for tier, prefix, share in TIERS:
        names += [(f"{prefix}-{i:03d}", tier) for i in range(1, max(1, round(count * share)) + 1)]
    names += [(f"free-{i:04d}", "free") for i in range(1, max(1, count - len(names)) + 1)]
    # random ranking, except that enterprise tenants are usually among the big ones
    head_bias = {"enterprise": 0.05}
    names.sort(key=lambda n: head_bias.get(n[1], 1.0) * rng.random())
    return [
        Tenant(name, tier, 1.0 / (rank**zipf_s)) for rank, (name, tier) in enumerate(names, start=1)
    ]


class TenantPicker:
    """Draws tenants by weight; built once per locust process."""

    def __init__(self, tenants: list[Tenant]) -> None:
        self.tenants = tenants
        self.cumulative = list(itertools.accumulate(t.weight for t in tenants))

    def pick(self, rng: random.Random) -> Tenant:
        return rng.choices(self.tenants, cum_weights=self.cumulative, k=1)[0]


_pickers: dict[tuple[int, float, int], TenantPicker] = {}


def picker_for(options: Any) -> TenantPicker:
    key = (int(options.tenants), float(options.zipf_s), int(options.tenant_seed))
    if key not in _pickers:
        _pickers[key] = TenantPicker(build_tenants(*key))
    return _pickers[key]


class TenantUser(HttpUser):
    """One end user of one tenant: logs in, browses items, sometimes orders."""

    wait_time = between(0.2, 1.5)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.rng = random.Random()
        self.tenant = picker_for(options).pick(self.rng)
        self.user_id = f"{self.tenant.name}-u{self.rng.randrange(100_000):05d}"
        self.headers = {options.tenant_header: self.tenant.name}
        if options.tier_header:
            self.headers[options.tier_header] = self.tenant.tier
        self.login()

    @task(1)
    def login(self) -> None:
        body = {"tenant": self.tenant.name, "user": self.user_id, "password": "load-test"}
        self.client.post("/api/login", json=body, headers=self.headers, name="/api/login")

    @task(6)
    def list_items(self) -> None:
        page = self.rng.randint(1, 20)
        self.client.get(f"/api/items?page={page}", headers=self.headers, name="/api/items")

    @task(8)
    def get_item(self) -> None:
        item = self.rng.randrange(1, ITEM_IDS)
        self.client.get(f"/api/items/{item}", headers=self.headers, name="/api/items/{id}")

    @task(2)
    def create_order(self) -> None:
        lines = [
            {"item": self.rng.randrange(1, ITEM_IDS), "quantity": self.rng.randint(1, 5)}
            for _ in range(self.rng.randint(1, 4))
        ]
        body = {"tenant": self.tenant.name, "user": self.user_id, "lines": lines}
        self.client.post("/api/orders", json=body, headers=self.headers, name="/api/orders")
