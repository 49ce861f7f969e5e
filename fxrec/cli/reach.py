"""`fxrec audience population | build | reach`: `register(group)` adds them to the `audience` group.

Bad input (a query that does not parse, a missing index or population) exits with code 2 before
anything is written or started; a query error keeps its caret line under the offending token.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def register(group: typer.Typer) -> None:
    """Add `population`, `build` and `reach` to the audience group (fxrec's CLI calls this)."""

    @group.command("population")
    def population(
        out: Path = typer.Option(..., "--out", "-o", help="folder for the population's Parquet chunks"),
        users: int = typer.Option(100_000, "--users", help="how many users"),
        seed: int = typer.Option(11, "--seed"),
        chunk_size: int = typer.Option(100_000, "--chunk-size", help="users per Parquet chunk"),
    ) -> None:
        """Simulate a population of users with targetable attributes and noisy data providers."""
        from fxrec.jobs.reach import simulate_population

        simulate_population(out, users, seed, chunk_size)
        console.print(f"wrote {users:,} users to {out}", highlight=False)

    @group.command("build")
    def build(
        out: Path = typer.Option(..., "--out", "-o", help="folder for the index"),
        population: Path | None = typer.Option(
            None, "--population", help="a population folder (`fxrec audience population`)"
        ),
        events: Path | None = typer.Option(None, "--events", help="an fxrec event log, folded per user"),
        spec: Path | None = typer.Option(
            None, "--spec", help="with --events: which columns hold which fields (YAML)"
        ),
        nbytes: int | None = typer.Option(
            None,
            "--bytes",
            help="about how many bytes the sample may take (default: 1% of the users as rows)",
        ),
        shards: int = typer.Option(4, "--shards", help="shard files the sample is written in"),
        min_support: int = typer.Option(
            50, "--min-support", help="the fall-back's threshold (sampled users)"
        ),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Build a reach index: strata learned from the data, a stratified sample in shards, a JSON card."""
        from fxrec.jobs.reach import build_index

        card = build_index(out, population, events, spec, nbytes, shards, min_support, seed)
        console.print(
            f"wrote a reach index of {card['rows']:,} sampled users ({card['bytes']:,} bytes) of "
            f"{card['users']:,} in {card['strata']:,} strata ({', '.join(card['dimensions']) or 'one'}), "
            f"{card['shards']} shards, to {out}",
            highlight=False,
        )

    @group.command("reach")
    def reach(
        expr: str = typer.Argument(..., help='a targeting query, e.g. "age in 18..24 and interest:sports"'),
        index: Path = typer.Option(
            ..., "--index", "-i", help="a reach index folder (`fxrec audience build`)"
        ),
        shards: int | None = typer.Option(
            None, "--shards", help="Ray shards (default: the index's shard files)"
        ),
        replicas: int = typer.Option(2, "--replicas", help="Ray actors per shard"),
        in_process: bool = typer.Option(False, "--in-process", help="answer in this process, without Ray"),
        address: str | None = typer.Option(
            None, "--address", help="join the Ray cluster at host:port (default: a local Ray, 2 CPUs)"
        ),
        as_json: bool = typer.Option(False, "--json", help="print the answer as JSON"),
    ) -> None:
        """Estimate how many users and impressions a targeting query reaches, with 95% intervals."""
        from fxrec.audience.query import QueryError
        from fxrec.jobs.reach import estimate_reach

        try:
            answer = estimate_reach(index, expr, shards, replicas, in_process, address)
        except QueryError as error:
            errors.print(f"[red]error:[/] {escape(str(error))}")
            raise typer.Exit(code=2) from None
        if as_json:
            typer.echo(json.dumps(answer.to_dict()))
            return
        e = answer.estimate
        table = Table("", "estimate", "95% low", "95% high", title=expr, title_justify="left")
        table.add_row("users", f"{e.users:,.0f}", f"{e.users_low:,.0f}", f"{e.users_high:,.0f}")
        table.add_row(
            "impressions", f"{e.impressions:,.0f}", f"{e.impressions_low:,.0f}", f"{e.impressions_high:,.0f}"
        )
        console.print(table)
        how = "exact (every stratum decided)" if e.exact else f"{e.support:,} sampled users reached"
        console.print(
            f"{how}; {answer.mode}, {answer.seconds * 1e3:.1f} ms; fall-back: "
            + (f"{len(answer.fallback_strata)} strata" if answer.fallback_strata else "none"),
            highlight=False,
        )
        if answer.fallback_strata:
            fell = Table("stratum that fell back", "users", "sampled")
            for label, users, sampled in answer.fallback_strata[:10]:
                fell.add_row(label, f"{users:,}", f"{sampled:,}")
            if len(answer.fallback_strata) > 10:
                fell.add_row(f"... {len(answer.fallback_strata) - 10} more", "", "")
            console.print(fell)
