"""The quality table behind `POST /v1/quality`: the report `fxrec audience quality` writes
(quality.json, fxrec.audience.quality_report.assess), flattened to one row per provider and segment.

Each row carries the report's primary estimate (precision with its 95% interval, false-positive rate,
recall, cross-validated aggregate error) at the top level and every method's estimates under
`methods`; a segment with too few usable campaigns has them null and says why in `skipped`.
Providers come in rank order with their summary. NaN and infinities become null: a JSON body cannot
carry them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fxrec.errors import InputError
from fxrec.serving.validation import RequestError

PRIMARY_KEYS = ("precision", "precision_ci", "false_positive_rate", "recall", "cv_error")
_SHOWN = 20  # known names an error lists


def finite(value: Any) -> Any:
    """JSON values with NaN and infinities as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _listed(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


class QualityTable:
    """Rows per provider and segment, and the providers (ranked first, best first)."""

    def __init__(self, rows: list[dict], providers: list[dict], method: str, campaigns: int | None):
        self.rows, self.providers = finite(rows), finite(providers)
        self.method, self.campaigns = method, campaigns

    @classmethod
    def load(cls, path: Path) -> QualityTable:
        """quality.json as `fxrec audience quality` writes it; InputError when it is not one."""
        path = Path(path)
        try:
            report = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"{path}: no such file; write it with `fxrec audience quality`") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: not JSON ({error})") from None
        try:
            return cls.from_report(report)
        except (KeyError, TypeError, AttributeError) as error:
            raise InputError(f"{path}: not a quality report (missing or malformed {error})") from None

    @classmethod
    def from_report(cls, report: dict) -> QualityTable:
        method = report["method"]
        providers = report["providers"]
        ranked = [p for p in report.get("ranking", []) if p in providers]
        order = ranked + [p for p in providers if p not in ranked]
        rows, summaries = [], []
        for provider in order:
            entry = providers[provider]
            summary = entry.get("summary", {})
            summaries.append({"provider": provider, **summary})
            for segment, fitted in entry["segments"].items():
                row: dict[str, Any] = {
                    "provider": provider,
                    "segment": segment,
                    "rank": summary.get("rank"),
                    "campaigns": fitted.get("campaigns"),
                }
                estimate = fitted.get(method, {})
                row.update({key: estimate.get(key) for key in PRIMARY_KEYS})
                row["methods"] = {k: v for k, v in fitted.items() if isinstance(v, dict)}
                row["skipped"] = fitted.get("skipped")
                rows.append(row)
        return cls(rows, summaries, method, report.get("campaigns"))

    def select(self, provider: str | None, segment: str | None) -> dict:
        """The rows of one provider and/or segment (names match case-insensitively); 404 naming the
        known ones when none match."""
        rows = self.rows
        if provider is not None:
            rows = [r for r in rows if r["provider"].lower() == provider.lower()]
            if not rows:
                known = list(dict.fromkeys(r["provider"] for r in self.rows))
                raise RequestError(
                    404, f"unknown provider {provider!r}", [f"known providers: {_listed(known)}"]
                )
        if segment is not None:
            known = list(dict.fromkeys(r["segment"] for r in rows))
            rows = [r for r in rows if r["segment"].lower() == segment.lower()]
            if not rows:
                raise RequestError(404, f"unknown segment {segment!r}", [f"known segments: {_listed(known)}"])
        chosen = {r["provider"] for r in rows}
        return {
            "method": self.method,
            "campaigns": self.campaigns,
            "rows": rows,
            "providers": [p for p in self.providers if p["provider"] in chosen],
        }
