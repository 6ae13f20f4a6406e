"""What a benchmark returns, and how it is shown: a table for people or JSON lines for tools."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Protocol, TextIO


@dataclass(frozen=True)
class Figure:
    """One measured number. ``baseline`` is what it is compared with; ``ratio`` is value/baseline."""

    name: str
    value: float
    unit: str
    baseline: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def as_json(self) -> str:
        record = {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "ratio": self.ratio,
        }
        return json.dumps(record)


@dataclass
class Report:
    """The figures of one run, plus notes that say how far to trust them."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class BenchCommand(Protocol):
    """A ``scripts/bench`` subcommand: a module with these three names."""

    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> Report: ...


def show(report: Report, as_json: bool, out: TextIO = sys.stdout) -> None:
    """JSON mode keeps stdout machine-readable: figures there, notes on stderr."""
    if as_json:
        for figure in report.figures:
            print(figure.as_json(), file=out)
        _print_notes(report.notes, sys.stderr)
        return
    print(report.title, file=out)
    print(file=out)
    print(table(report.figures), file=out)
    print(file=out)
    _print_notes(report.notes, out)


_ALIGN = ("<", ">", "<", ">", ">")


def table(figures: list[Figure]) -> str:
    header = ("figure", "value", "unit", "baseline", "ratio")
    rows = [header] + [
        (f.name, number(f.value), f.unit, number(f.baseline), number(f.ratio, "{:.2f}x")) for f in figures
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join(_table_line(row, widths) for row in rows)


def _table_line(row: tuple[str, ...], widths: list[int]) -> str:
    cells = (f"{cell:{align}{width}}" for cell, align, width in zip(row, _ALIGN, widths, strict=True))
    return "  ".join(cells).rstrip()


def number(value: float | None, style: str = "") -> str:
    if value is None:
        return "-"
    if style:
        return style.format(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _print_notes(notes: list[str], out: TextIO) -> None:
    for note in notes:
        print(f"- {note}", file=out)
