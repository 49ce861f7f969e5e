"""Config blocks typed from constructor signatures: one pydantic model per registered class.

A block such as `interaction: {name: dcnv2, num_layers: 2}` holds the keyword arguments of one class,
less those the builder fills in (the token count, the width, the tasks). fxrec derives each block's
pydantic model from the class's constructor (argument names, annotations, defaults), so registering a
new interaction or transfer channel is all it takes for configs to accept and check its block, and a
new constructor argument is a new config key. Blocks forbid unknown keys, and the message lists the
keys the block accepts.

Example::

    DCNv2Config = derive_block(DCNv2, "interaction 'dcnv2'", filled=("num_tokens", "dim"), tag="name", value="dcnv2")
    block = DCNv2Config.model_validate({"name": "dcnv2", "num_layers": 2})
    DCNv2(num_tokens=6, dim=16, **block.kwargs())
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    SerializeAsAny,
    ValidationError,
    create_model,
    model_validator,
)


class Block(BaseModel):
    """A config block: the constructor arguments of `target` that a config sets, plus the keys the
    builder reads itself (`own`) and, for a block chosen by name or kind, that tag."""

    model_config = ConfigDict(extra="forbid")

    target: ClassVar[type]
    what: ClassVar[str]  # how messages name the block, e.g. "interaction 'dcnv2'"
    arguments: ClassVar[tuple[str, ...]]  # the fields passed on to `target`
    required: ClassVar[tuple[str, ...]]

    @classmethod
    def check_keys(cls, data: dict[str, Any]) -> None:
        """ValueError for a key the block does not accept, or a required key it lacks, listing the accepted keys."""
        accepted = ", ".join(cls.model_fields)
        for key in data:
            if key not in cls.model_fields:
                raise ValueError(f"unknown key {key!r} for {cls.what}; accepted keys: {accepted}")
        for key in cls.required:
            if key not in data:
                raise ValueError(f"{cls.what} needs the key {key!r}; accepted keys: {accepted}")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            cls.check_keys(data)
        return data

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments for `target` (every field but the tag and the builder's own keys)."""
        return {name: getattr(self, name) for name in self.arguments}


def derive_block(
    target: type,
    what: str,
    filled: tuple[str, ...] = (),
    tag: str | None = None,
    value: str | None = None,
    own: dict[str, tuple[Any, Any]] | None = None,
    exclude: tuple[str, ...] = (),
) -> type[Block]:
    """The Block type for `target`'s constructor, less the `filled` and `exclude`d arguments.

    `tag`/`value`: a discriminator field (e.g. name="dcnv2") typed `Literal[value]`; it is passed on to
    `target` only when the constructor has that argument (TaskHeads' `kind`). `own`: extra fields the
    builder reads itself, {name: (annotation, default)} (`...` for required).
    """
    init = target.__init__
    hints = typing.get_type_hints(init)
    fields: dict[str, Any] = {}
    if tag is not None:
        fields[tag] = (Literal[value], value)
    fields.update(own or {})
    arguments = []
    for parameter in inspect.signature(init).parameters.values():
        if parameter.name == "self" or parameter.name in filled or parameter.name in exclude:
            continue
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(
                f"{target.__name__}: a config block needs named constructor arguments, not *{parameter.name}"
            )
        arguments.append(parameter.name)
        if parameter.name == tag:
            continue
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[parameter.name] = (hints.get(parameter.name, Any), default)
    block = create_model(f"{target.__name__}Config", __base__=Block, __module__=__name__, **fields)
    block.target = target
    block.what = what
    block.arguments = tuple(arguments)
    block.required = tuple(name for name, field in block.model_fields.items() if field.is_required())
    return block


class DerivedBlocks(Mapping[str, type[Block]]):
    """The Block type of each class of a live registry ({name: class}), derived when first asked for.

    A class registered after import (`fxrec.transfer.registry.register_channel`) gets its config type
    the first time a config names it; nothing else needs to know about it.
    """

    def __init__(self, registry: Mapping[str, type], derive: Callable[[str, type], type[Block]]):
        self.registry = registry
        self.derive = derive
        self._blocks: dict[tuple[str, type], type[Block]] = {}

    def __getitem__(self, name: str) -> type[Block]:
        cls = self.registry[name]
        if (name, cls) not in self._blocks:
            self._blocks[(name, cls)] = self.derive(name, cls)
        return self._blocks[(name, cls)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.registry)

    def __len__(self) -> int:
        return len(self.registry)


def block_union(
    blocks: Mapping[str, type[Block]],
    tag: str,
    what: str,
    default: str | None = None,
    bare_string: bool = False,
    moved: dict[str, str] | None = None,
) -> Any:
    """One config type for a registry: the block whose `tag` field names it (a tagged union, read from
    `blocks` when a config is validated, so a class registered later is accepted too).

    `default`: the block chosen when the tag is left out. `bare_string`: a plain string is the block
    of that name with every default (as `channels: [kd]`). `moved`: keys that left this block, with
    where they went, so an old config gets told where to put them.
    """

    def build(data: Any) -> Any:
        if bare_string and isinstance(data, str):
            data = {tag: data}
        if isinstance(data, Block):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping of {what} keys ({tag}: ...), got {type(data).__name__}")
        key = data.get(tag, default)
        if key not in blocks:
            got = f"unknown {what} {key!r}" if tag in data else f"{what} needs the key {tag!r}"
            raise ValueError(f"{got}; known: {', '.join(sorted(blocks))}")
        block = blocks[key]
        for old, where in (moved or {}).items():
            if old in data:
                raise ValueError(f"{old!r} is no longer a key of {block.what}: {where}")
        block.check_keys(data)
        try:
            return block.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise ValueError(f"{block.what}: {problems}") from None

    return Annotated[SerializeAsAny[Block], BeforeValidator(build)]
