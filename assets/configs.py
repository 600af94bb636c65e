"""Dagster run configs derived from the library's configuration dataclasses, so the two cannot drift.

Each library dataclass in latent_atlas/ is the one source of a stage's parameters: their names, types,
defaults and (from the attribute docstrings) the descriptions the UI's launchpad shows. A Dagster
config is made from it, leaving out what comes from a resource (a device, NPZ key names) and adding
only what is the asset's own (an asset check's bound). A field added to the library appears in the
UI with its default, and `library_config(config)` turns the run config back into the dataclass.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import cache

import dagster as dg
import pydantic
from pydantic import Field


@cache
def attribute_docs(cls: type) -> dict[str, str]:
    """{field: its attribute docstring, on one line} for a dataclass written as
    `name: type = default` followed by a string literal (the convention of latent_atlas/)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError):
            continue
        for node, following in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def config_class(*libraries: type, exclude: tuple[str, ...] = (), name: str = "",
                 extra: dict[str, tuple[type, typing.Any]] | None = None) -> type[dg.Config]:
    """A dg.Config with every field of the `libraries` dataclasses but `exclude`, plus `extra`
    {name: (type, pydantic Field)} that only the asset has. Several dataclasses are merged flat: a name
    they share (a seed) is one field, and must have one type and default in all of them. A nested
    dataclass field becomes a nested config."""
    fields: dict[str, tuple[type, typing.Any]] = {}
    for library in libraries:
        hints, docs = typing.get_type_hints(library), attribute_docs(library)
        for f in dataclasses.fields(library):
            if f.name in exclude or not f.init:
                continue
            kind = hints[f.name]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if dataclasses.is_dataclass(kind):
                nested = config_class(kind)
                field = (nested, Field(default_factory=nested, description=docs.get(f.name, "")))
            elif typing.get_origin(kind) is tuple:  # run config has lists; library_config turns them back
                field = (list[typing.get_args(kind)[0]], Field(default=list(default), description=docs.get(f.name, "")))
            else:
                field = (kind, Field(default=default, description=docs.get(f.name, "")))
            if f.name in fields:
                seen = fields[f.name]
                if seen[0] != field[0] or seen[1].default != field[1].default:
                    raise TypeError(f"{f.name!r} differs between {[c.__name__ for c in libraries]}")
                continue
            fields[f.name] = field
    fields.update(extra or {})
    model = pydantic.create_model(name or f"{libraries[0].__name__}Run", __base__=dg.Config, **fields)
    model.__libraries__ = libraries
    model.__doc__ = " ".join((c.__doc__ or "").strip() for c in libraries)
    return model


def library_config(config: dg.Config, library: type | None = None, **resolved: typing.Any):
    """The library dataclass (`library`, or the config's only one) filled from a derived config, with
    `resolved` giving the fields the config leaves out (or overriding them)."""
    library = library or _only(type(config).__libraries__)
    values, hints = dict(resolved), typing.get_type_hints(library)
    for f in dataclasses.fields(library):
        if f.name in values or f.name not in type(config).model_fields:
            continue
        value = getattr(config, f.name)
        if isinstance(value, dg.Config):
            value = library_config(value)
        elif typing.get_origin(hints[f.name]) is tuple:
            value = tuple(value)
        values[f.name] = value
    return library(**values)


def _only(libraries: tuple[type, ...]) -> type:
    if len(libraries) != 1:
        raise TypeError(f"say which of {[c.__name__ for c in libraries]} to build")
    return libraries[0]
