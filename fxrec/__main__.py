"""`python -m fxrec` and `torchrun ... -m fxrec train fm ...`: the fxrec command line."""

from fxrec.cli import app

if __name__ == "__main__":
    app(prog_name="fxrec")
