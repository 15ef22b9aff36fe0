"""Tables the benchmark scripts print (aligned text) and save (markdown)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def render_text(table: Table) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(table.headers, *table.rows, strict=True)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in pairs)

    out = [table.title, line(table.headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in table.rows]
    out += [f"  {n}" for n in table.notes]
    return "\n".join(out)


def render_markdown(table: Table) -> str:
    out = [f"### {table.title}", "", "| " + " | ".join(table.headers) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.headers))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in table.rows]
    if table.notes:
        out += [""] + [f"{n[0].upper()}{n[1:]}." for n in table.notes]
    return "\n".join(out)
