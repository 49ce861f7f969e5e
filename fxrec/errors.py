"""Bad user input: one exception type, raised where the input is checked, before anything is written.

`fxrec`'s CLI turns an `InputError` raised anywhere below a command into exit code 2 and one line on
stderr per problem, so its message is the whole report: which file or key, what it holds, what was
expected.
"""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel, ValidationError


class InputError(ValueError):
    """A config, a file or a run directory that fxrec cannot use. Each problem is one line naming the file
    or key; a check that finds several raises them together (`InputError(*problems)`), so a user fixes
    every one in one go instead of meeting them one run at a time."""

    def __init__(self, *problems: str):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class TrainingInterrupted(RuntimeError):
    """Raised when `train.max_steps` stops a run early; the checkpoint lets the next run resume.

    Not an error of the input: `fxrec train` reports it in one line with exit code 1, on one process
    and on `--nproc N` ranks alike (`fxrec.dist.session.launch` raises a rank's again in the parent).
    """


def describe_validation(error: ValidationError, model: type[BaseModel]) -> str:
    """A pydantic error on `model`'s input as one line: each bad key's dotted path and what was wrong.

    An unknown key lists the keys accepted where it stands, e.g.
    "unknown key 'train.batch_sise'; accepted keys: batch_size, dense_lr, ...".
    """
    problems = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        where = _dotted(loc)
        if item["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            accepted = f"; accepted keys: {', '.join(parent.model_fields)}" if parent is not None else ""
            problems.append(f"unknown key {where!r}{accepted}")
        elif item["type"] == "value_error":
            problems.append(f"{where}: {item['ctx']['error']}" if where else str(item["ctx"]["error"]))
        elif item["type"] == "missing":
            problems.append(f"missing key {where!r}")
        else:
            problems.append(f"{where}: {item['msg']} (got {item['input']!r})")
    return "; ".join(problems)


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model whose fields sit at `loc` (list indices skipped), if the path leads to one."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        if current is None or part not in current.model_fields:
            return None
        current = _model_in(current.model_fields[part].annotation)
    return current


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The first pydantic model inside an annotation such as `Model | None` or `list[Model]`."""
    if isinstance(annotation, type) and not isinstance(annotation, types.GenericAlias) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None
