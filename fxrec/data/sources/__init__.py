"""Importers that turn public datasets and user tables into fxrec event logs."""

from fxrec.data.sources.movielens import import_movielens_100k, movielens_split_points
from fxrec.data.sources.open_bandit import import_open_bandit
from fxrec.data.sources.table import import_table

__all__ = ["import_movielens_100k", "import_open_bandit", "import_table", "movielens_split_points"]
