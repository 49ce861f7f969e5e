"""`python -m fxrec.serving serve|loadtest|refresh-worker`: the serving commands without the full CLI
(the load test starts its servers this way)."""

import typer

from fxrec.serving.cli import register

app = typer.Typer(no_args_is_help=True)
register(app)

if __name__ == "__main__":
    app()
