"""`python -m fxrec.cli`: the `fxrec` command."""

from fxrec.cli import app

app()
