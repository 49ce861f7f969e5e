"""`fxrec audience campaigns` and `fxrec audience quality`: `register(audience_app)` adds them.

    fxrec audience campaigns runs/pop            # campaigns.json next to the population
    fxrec audience quality runs/pop              # provider table, runs/pop/quality.json
    fxrec audience quality runs/pop --segment sports --target "country:US and age in 18..24"

Bad input (a missing directory, malformed campaigns.json, an unknown segment or a query that does
not parse) is an InputError: exit code 2, one line per problem, nothing written.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fxrec.errors import InputError

console = Console()
if not console.is_terminal:  # piped or captured: whole tables, not cut to 80 columns
    console = Console(width=120)
COLUMNS = (  # header, table_rows key
    ("provider", "provider"),
    ("rank", "rank"),
    ("segs", "segments"),
    ("precision", "precision"),
    ("±95%", "ci95"),
    ("FPR", "fpr"),
    ("recall", "recall"),
    ("CV err", "cv_err_mle"),
    ("CV err LS", "cv_err_ls"),
    ("naive", "precision_naive"),
)
PopulationArgument = typer.Argument(..., help="a population directory (schema.yaml, part-*.parquet)")


def _population(path: Path):
    from fxrec.audience.population import SCHEMA_FILE, read_population

    if not (path / SCHEMA_FILE).is_file() or not any(path.glob("part-*.parquet")):
        raise InputError(f"{path}: not a population directory (expected {SCHEMA_FILE} and part-*.parquet)")
    return read_population(path)


def campaigns(
    population: Path = PopulationArgument,
    count: int = typer.Option(240, "--campaigns", help="campaigns to run"),
    segments: int = typer.Option(20, "--segments", help="the agency measures this many segments"),
    seed: int = typer.Option(7, "--seed"),
) -> None:
    """Run seeded campaigns over a population; write their agency aggregates and label shares."""
    from pydantic import ValidationError

    from fxrec.audience.campaigns import CampaignConfig, measure_campaigns

    try:
        config = CampaignConfig(seed=seed, campaigns=count, segments=segments)
    except ValidationError as error:
        raise InputError(*[f"--{e['loc'][0]}: {e['msg']}" for e in error.errors()]) from None
    from rich.progress import track

    schema, chunks = _population(population)
    parts = len(list(population.glob("part-*.parquet")))
    aggregates = measure_campaigns(schema, track(chunks, "running the campaigns", parts), config)
    path = aggregates.save(population)
    console.print(
        f"{len(aggregates)} campaigns, {len(aggregates.segments)} segments, "
        f"{len(aggregates.providers)} providers -> {path}",
        highlight=False,
    )


def quality(
    directory: Path = typer.Argument(..., help="a population directory holding campaigns.json"),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="report file (default: DIRECTORY/quality.json)"
    ),
    folds: int = typer.Option(5, "--folds", help="cross-validation folds across campaigns"),
    seed: int = typer.Option(0, "--seed", help="seed of the fold split"),
    segment: str | None = typer.Option(None, "--segment", help="print this segment's estimates per provider"),
    target: str | None = typer.Option(
        None, "--target", help="with --segment: qualified reach of this targeting per provider"
    ),
    budget: int = typer.Option(20_000, "--budget", help="sample users of the reach index for --target"),
) -> None:
    """Provider precision, false-positive rate, interval, CV error and rank from campaign aggregates."""
    from fxrec.audience.campaigns import CampaignAggregates
    from fxrec.audience.quality_report import assess, table_rows, write_report

    if not directory.is_dir():
        raise InputError(f"{directory}: no such directory")
    aggregates = CampaignAggregates.load(directory)
    if segment is not None and segment not in aggregates.segments:
        raise InputError(
            f"--segment: {segment!r} is not measured; measured: {', '.join(aggregates.segments)}"
        )
    if target is not None and segment is None:
        raise InputError("--target needs --segment: qualified reach is of one segment")
    if target is not None:
        from fxrec.audience.query import parse

        parse(target, _population(directory)[0])  # a QueryError (InputError) before any work
    report = assess(aggregates, folds=folds, seed=seed)
    if target is not None:
        report["qualified_reach"] = _qualified(directory, report, segment, target, budget, seed)
    table = Table(title=f"provider quality: {len(aggregates)} campaigns, {folds}-fold cross-validation")
    for header, _ in COLUMNS:
        table.add_column(header, justify="left" if header == "provider" else "right", no_wrap=True)
    for row in table_rows(report):
        table.add_row(*[_cell(row.get(key)) for _, key in COLUMNS])
    console.print(table)
    if segment is not None:
        _print_segment(report, segment)
    path = write_report(report, out or directory / "quality.json")
    console.print(f"wrote {path}", highlight=False)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _print_segment(report: dict, segment: str) -> None:
    table = Table(title=f"segment {segment}")
    headers = (
        "provider",
        "campaigns",
        "precision",
        "95% CI",
        "FPR",
        "recall",
        "CV err",
        "labelled",
        "qualified",
    )
    for header in headers:
        table.add_column(header, justify="left" if header == "provider" else "right", no_wrap=True)
    qualified = report.get("qualified_reach", {}).get("providers", {})
    for provider, entry in report["providers"].items():
        row = entry["segments"][segment]
        if "skipped" in row:
            table.add_row(provider, str(row["campaigns"]), *["-"] * 7)
            continue
        m = row["mle"]
        reach = qualified.get(provider)
        table.add_row(
            provider,
            str(row["campaigns"]),
            f"{m['precision']:.3f}",
            f"{m['precision_ci'][0]:.2f}-{m['precision_ci'][1]:.2f}",
            f"{m['false_positive_rate']:.3f}",
            f"{m['recall']:.3f}",
            f"{m['cv_error']:.3f}",
            f"{reach['labelled']:,.0f}" if reach else "-",
            f"{reach['qualified']:,.0f}" if reach else "-",
        )
    console.print(table)


def _qualified(directory: Path, report: dict, segment: str, target: str, budget: int, seed: int) -> dict:
    """Qualified reach of `target` per provider, through a reach index built on the population."""
    import numpy as np

    from fxrec.audience.build import build_reach_index
    from fxrec.audience.population import read_population
    from fxrec.audience.quality import qualified_reach
    from fxrec.audience.quality_report import rates_of
    from fxrec.audience.workload import random_queries

    schema, chunks = _population(directory)
    first = next(iter(chunks))
    rows = np.random.default_rng(seed).permutation(len(first))[: min(len(first), 20_000)]
    index = build_reach_index(
        schema,
        lambda: read_population(directory)[1],
        first.take(np.sort(rows)),
        random_queries(schema, 200, seed),
        budget,
    )
    providers = {}
    for provider, entry in report["providers"].items():
        if "skipped" in entry["segments"][segment]:
            continue
        found = qualified_reach(index, rates_of(report, provider, segment), provider, segment, target)
        providers[provider] = found.to_dict()
    return {"segment": segment, "target": target, "budget": budget, "providers": providers}


def register(audience_app: typer.Typer) -> None:
    audience_app.command("campaigns")(campaigns)
    audience_app.command("quality")(quality)
