"""What a scenario found, and the summary table of ``make chaos``."""

from dataclasses import dataclass, field

Delivery = tuple[str, str]  # (event id evt_..., receiver path or URL)


@dataclass
class Report:
    """One scenario's outcome. ``problems`` lists every check that failed; empty means it passed."""

    scenario: str
    published: int = 0
    expected: set[Delivery] = field(default_factory=set)
    delivered: set[Delivery] = field(default_factory=set)
    duplicates: int = 0
    explained: list[str] = field(default_factory=list)  # one line per duplicate, saying why it happened
    faults: int = 0
    fault_kind: str = ""
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> set[Delivery]:
        return self.expected - self.delivered

    @property
    def unexpected(self) -> set[Delivery]:
        return self.delivered - self.expected

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def close(self) -> None:
        """Turn set mismatches and unexplained duplicates into problems."""
        self.check(not self.lost, f"{len(self.lost)} deliveries lost, e.g. {sorted(self.lost)[:3]}")
        self.check(not self.unexpected, f"{len(self.unexpected)} deliveries nobody committed, "
                                        f"e.g. {sorted(self.unexpected)[:3]}")


HEADERS = ["scenario", "events published", "deliveries expected", "delivered", "lost", "duplicates",
           "faults injected", "wall time", "result"]


def table(reports: list[Report]) -> str:
    rows = [[r.scenario, f"{r.published:,}", f"{len(r.expected):,}", f"{len(r.delivered & r.expected):,}",
             f"{len(r.lost):,}", f"{r.duplicates:,} ({len(r.explained)} explained)",
             f"{r.faults:,} {r.fault_kind}".strip(), f"{r.wall_s:.1f} s", "ok" if not r.problems else "FAILED"]
            for r in reports]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(HEADERS)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
