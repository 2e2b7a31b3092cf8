"""`run`'s and `batch`'s typer options, generated from emoengine.RunSettings' fields: the flag from the Python
name (settings.flag), the help, min/max and the choices from the field's metadata. Nothing here is a copy."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import typer

from emoengine.settings import RunSettings, flag, speak_flags


def _declarations(f: dataclasses.Field) -> list[str]:
    m = f.metadata
    if m.get("negatable"):
        return [f"{flag(f.name)}/--no-{f.name.replace('_', '-')}"]
    return [flag(f.name), *([m["short"]] if m.get("short") else [])]


def _help(f: dataclasses.Field) -> str:
    """The field's help as flags speak (`with save_activations` -> `with --save-activations`), its choices added
    where the help does not already list them."""
    text = speak_flags(f.metadata["help"], [n for n in RunSettings.names() if n != f.name and "_" in n])
    choices = f.metadata.get("choices")
    listed = " | ".join(map(str, choices or ()))
    return text if not choices or listed in text else f"{text} ({listed})"


def settings_parameters(settings: type[RunSettings] = RunSettings, for_batch: bool = False) -> list[inspect.Parameter]:
    """One keyword parameter per field (a `batch` leaves out the fields marked batch=False), typer-declared."""
    hints = typing.get_type_hints(settings)
    params = []
    for f in dataclasses.fields(settings):
        if for_batch and not f.metadata.get("batch", True):
            continue
        m = f.metadata
        declared = typer.Option(f.default, *_declarations(f), help=_help(f), min=m.get("min"), max=m.get("max"))
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=declared,
                                        annotation=hints[f.name]))
    return params


def settings_of(options: dict, settings: type[RunSettings] = RunSettings, **fixed) -> RunSettings:
    """The RunSettings among a command's keyword arguments (its own options left out), with `fixed` over them."""
    names = set(settings.names())
    return settings(**{**{k: v for k, v in options.items() if k in names}, **fixed})


def with_signature(func, own: typing.Callable, settings: type[RunSettings] = RunSettings, for_batch: bool = False):
    """`func(**kwargs)` declared to typer as `own`'s parameters followed by the settings' ones."""
    own_hints = typing.get_type_hints(own)
    params = [p.replace(annotation=own_hints[p.name], kind=inspect.Parameter.KEYWORD_ONLY)
              for p in inspect.signature(own).parameters.values()]
    taken = {p.name for p in params}
    params += [p for p in settings_parameters(settings, for_batch) if p.name not in taken]
    func.__signature__ = inspect.Signature(params)
    func.__annotations__ = {p.name: p.annotation for p in params}
    func.__doc__ = own.__doc__
    return func
