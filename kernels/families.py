"""The registry of window-metric families, by name, in the order their tables are written.

Each family module declares its metrics and fills them (kernels/schema.py); this table is what
the driver (`kernels.window`), the metrics stage (`pipeline.metrics`), the schema views of
`kernels.spec` and the numpy twins' dispatch (`kernels.reference.TWINS`) read. A new family is one
module plus one entry here (docs/metrics.md, "Adding a window metric").
"""
from __future__ import annotations

from kernels import playing, rhythm, structure
from kernels.schema import Family, Metric


def register(*families: Family) -> dict[str, Family]:
    """{family name: family}; a metric name may belong to one family only (it names a table)."""
    seen: dict[str, str] = {}
    for f in families:
        for m in f.metrics:
            if m.name in seen:
                raise ValueError(f"window metric {m.name!r} is declared by families {seen[m.name]!r} and {f.name!r}")
            seen[m.name] = f.name
    return {f.name: f for f in families}


FAMILIES: dict[str, Family] = register(rhythm.FAMILY, structure.FAMILY, playing.FAMILY)
# every window metric by name, in table order
METRICS: dict[str, Metric] = {m.name: m for f in FAMILIES.values() for m in f.metrics}
# the families that read only the hits (kernels.window_metrics) / also velocity and offset
HIT_FAMILIES = tuple(name for name, f in FAMILIES.items() if f.inputs == ("hits",))
PLAYED_FAMILIES = tuple(name for name in FAMILIES if name not in HIT_FAMILIES)


def family_of(metric: str) -> Family:
    for f in FAMILIES.values():
        if metric in f.names:
            return f
    raise KeyError(f"no window metric {metric!r}; known: {sorted(METRICS)}")
