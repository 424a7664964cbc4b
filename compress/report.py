"""The one report type every conversion returns (quantize, prune, sparsify, fuse_rnn).

print(report) is a table; report.to_dict() serialises it. One entry per module considered: its
name, its type before and after, details (mode, bits, format, backend, sparsity, ...), and for a
module left alone, the reason.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Entry:
    name: str
    before: str
    after: str | None  # None: skipped
    details: dict = field(default_factory=dict)
    reason: str = ""

    @property
    def converted(self) -> bool:
        return self.after is not None


@dataclass
class Report:
    action: str
    entries: list[Entry] = field(default_factory=list)

    def add(self, name, before, after=None, reason="", **details) -> Entry:
        e = Entry(name or "<root>", before, after, details, reason)
        self.entries.append(e)
        return e

    @property
    def converted(self) -> list[Entry]:
        return [e for e in self.entries if e.converted]

    @property
    def skipped(self) -> list[Entry]:
        return [e for e in self.entries if not e.converted]

    def __getitem__(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"action": self.action, "converted": len(self.converted), "skipped": len(self.skipped),
                "entries": [asdict(e) for e in self.entries]}

    def __str__(self) -> str:
        rows = [("module", "before", "after", "details / reason")]
        for e in self.entries:
            info = ", ".join(f"{k}={v}" for k, v in e.details.items())
            rows.append((e.name, e.before, e.after or "(skipped)",
                         info if e.converted else e.reason + (f" [{info}]" if info else "")))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{self.action}: {len(self.converted)} converted, {len(self.skipped)} skipped"]
        width4 = max(len(r[3]) for r in rows)
        for i, r in enumerate(rows):
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
            if i == 0:
                lines.append("  " + "-" * (sum(widths) + 2 * 3 + width4))
        return "\n".join(lines)

    __repr__ = __str__
