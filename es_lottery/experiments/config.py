"""Typed experiment configs: nested frozen dataclasses loaded from YAML mappings, strictly.

Every experiment (``slt``, ``imp``, ``nets``) describes its config as a frozen dataclass whose fields are
plain types, ``Literal`` choices, tuples, string-keyed dicts, ``X | None`` and nested dataclasses (its own
or the library's: ``GAConfig``, ``NeTSConfig``, ``ESConfig`` …). :func:`load` builds one from a mapping
(what ``yaml.safe_load`` gives) with ONE validator per field type, and every error is a
:class:`ConfigError` whose message starts with the field's full path (``trainer.population_size``,
``edge_popup[1].kept_fraction``) and says what the field accepts:

* strict scalars: an ``int`` field takes integers only (``2.0`` and ``2.5`` are errors, never truncated);
  a ``float`` field takes numbers (an integer becomes a float, so ``1`` and ``1.0`` resolve and hash the
  same); a ``bool`` field takes ``true``/``false`` only (never ``"yes"`` or ``1``); a ``str`` field takes
  strings only. YAML reads ``1e-4`` (no dot) as a string: the error says to write ``1.0e-4``.
* unknown keys are named with the keys the section allows;
* a nested section given partly is merged into the field's default (``imp: {prune_rate: 0.3}`` keeps the
  default ``num_levels``); ``null`` for a section means its default;
* checks across fields stay where they are (the dataclasses' ``__post_init__``); their message gets the
  section's path in front.

Spelling. One spelling per concept in YAML, in the dataclasses and on the command line:
``population_size``, ``learning_rate`` (a step size; schedules are ``lr_schedule``), ``network`` /
``networks``. Library dataclasses that still spell a field otherwise are listed in :data:`SPELLING`: the
YAML key is the canonical one and the loader maps it onto the library's field (``ga.population_size`` →
``GAConfig.pop_size``); an entry goes once the library renames its field. Old spellings in old YAML files
and archives are translated by :mod:`es_lottery.experiments.legacy` with a ``FutureWarning`` naming the new
key.

Field metadata (``dataclasses.field(metadata=…)``) understood here:

* ``doc``: one line for the generated reference (``docs/configs.md``);
* ``inline``: a nested dataclass whose fields sit at this level of the YAML (the ES trainer's ``ESConfig``
  fields sit directly in ``trainer:``);
* ``tagged``: ``(key, registry)``: a section whose ``key`` entry (``type``) picks its dataclass from
  ``registry`` (a dict, so new kinds plug in: ``TRAINERS["ppo"] = …``);
* ``check``: a callable ``(value, path) -> value`` run after the type check (e.g. the dataset name);
* ``hashed``: ``False`` for fields that do not change a job's result (progress intervals); see
  :func:`nondefault`.

:func:`to_dict` writes a config back in the same YAML form (``config.yaml`` of a run), and
:func:`nondefault` keeps only what differs from the defaults — what the run store hashes.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import yaml

__all__ = [
    "SPELLING",
    "ConfigError",
    "load",
    "load_yaml",
    "nondefault",
    "reference_markdown",
    "reference_rows",
    "to_dict",
    "validate",
    "yaml_fields",
]


class ConfigError(ValueError):
    """A config value that does not fit its field; ``path`` is the field's full path."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


#: library field name → canonical YAML key, for library dataclasses (by ``module.qualname``, so that no
#: library module is imported to look it up) whose field is not spelled canonically yet
SPELLING: dict[str, dict[str, str]] = {
    "es_lottery.search.ga_slt.GAConfig": {"pop_size": "population_size"},
    "es_lottery.search.nets.NeTSConfig": {"pop_size": "population_size", "inner_lr": "inner_learning_rate"},
    "es_lottery.tasks.supervised.TrainConfig": {"lr": "learning_rate"},
    "es_lottery.search.es.ESConfig": {"lr": "learning_rate"},
}


def _spelling(cls: type) -> dict[str, str]:
    return SPELLING.get(f"{cls.__module__}.{cls.__qualname__}", {})


def yaml_key(cls: type, name: str) -> str:
    """The YAML key of field ``name`` of ``cls``."""
    return _spelling(cls).get(name, name)


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def yaml_fields(cls: type) -> list[str]:
    """The YAML keys a mapping for ``cls`` may hold (inline sections' keys included)."""
    keys = []
    for f in _init_fields(cls):
        if f.metadata.get("inline"):
            keys += yaml_fields(_hints(cls)[f.name])
        else:
            keys.append(yaml_key(cls, f.name))
    return keys


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "anything"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (dict, Mapping):
        return f"a mapping to {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({', '.join(yaml_fields(tp))})"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


# ----------------------------------------------------------------------------------------------
# one validator per field type


def _check_bool(value, path):
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise ConfigError(path, f"expected true or false, got {_describe(value)}")


def _check_int(value, path):
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, float | np.floating) and not isinstance(value, bool):
        raise ConfigError(
            path, f"expected an integer, got the number {value!r} (no rounding: write an integer)"
        )
    raise ConfigError(path, f"expected an integer, got {_describe(value)}")


def _check_float(value, path):
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_):
        v = float(value)
        if not math.isfinite(v):
            raise ConfigError(path, f"expected a finite number, got {value!r}")
        return v
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", value.strip()):
        raise ConfigError(
            path,
            f"expected a number, got the string {value!r} (YAML reads an exponent without a dot as text: "
            f"write {value.strip().lower().replace('e', '.0e', 1)})",
        )
    raise ConfigError(path, f"expected a number, got {_describe(value)}")


def _check_str(value, path):
    if isinstance(value, str):
        return value
    raise ConfigError(path, f"expected a string, got {_describe(value)}")


_SCALARS: dict[type, Callable[[Any, str], Any]] = {
    bool: _check_bool,
    int: _check_int,
    float: _check_float,
    str: _check_str,
}


def _check_literal(tp, value, path):
    allowed = typing.get_args(tp)
    if isinstance(value, bool) or value not in allowed:
        raise ConfigError(path, f"expected one of {', '.join(map(str, allowed))}; got {value!r}")
    return value


def _check_union(tp, value, path, base):
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(path, f"expected {_type_name(tp)}, got null")
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return validate(arg, value, path, base)
        except ConfigError as err:
            errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    raise ConfigError(path, f"expected {_type_name(tp)}, got {_describe(value)}")


def _check_tuple(tp, value, path, base):
    if not isinstance(value, list | tuple):
        raise ConfigError(path, f"expected a list, got {_describe(value)}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(validate(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
        raise ConfigError(path, f"expected a list of {len(args)} entries, got {len(value)}")
    return tuple(validate(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))


def _check_dict(tp, value, path, base):
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a mapping, got {_describe(value)}")
    args = typing.get_args(tp) or (str, Any)
    out = {}
    for k, v in value.items():
        key = validate(args[0], k, f"{path} (key {k!r})")
        out[key] = validate(args[1], v, _join(path, str(k)))
    return out


def validate(tp: Any, value: Any, path: str, base: Any = None) -> Any:
    """``value`` checked (and normalised: lists → tuples, ints → floats in float fields) against the type
    ``tp``; ``base`` is the field's default, into which a partial nested section is merged."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return validate(typing.get_args(tp)[0], value, path, base)
    if origin is Literal:
        return _check_literal(tp, value, path)
    if origin in (Union, types.UnionType):
        return _check_union(tp, value, path, base)
    if origin is tuple:
        return _check_tuple(tp, value, path, base)
    if origin in (dict, Mapping) or tp is dict:
        return _check_dict(tp, value, path, base)
    if tp in _SCALARS:
        return _SCALARS[tp](value, path)
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(path, f"expected null, got {_describe(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return load(tp, value, path, base=base if isinstance(base, tp) else None)
    if isinstance(value, tp):
        return value
    raise ConfigError(path, f"expected {_type_name(tp)}, got {_describe(value)}")


# ----------------------------------------------------------------------------------------------
# dataclasses


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _rename_in_message(cls: type, message: str) -> str:
    for lib, key in _spelling(cls).items():
        message = re.sub(rf"\b{re.escape(lib)}\b", key, message)
    return message


def _load_tagged(f: dataclasses.Field, value: Any, path: str, base: Any) -> Any:
    key, registry = f.metadata["tagged"]
    if any(isinstance(value, c) for c in registry.values()):
        return value
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            path, f"expected a mapping with '{key}' (one of {', '.join(registry)}), got {value!r}"
        )
    default_tag = next((t for t, c in registry.items() if isinstance(base, c)), None)
    tag = value.get(key, default_tag)
    if tag not in registry:
        raise ConfigError(_join(path, key), f"expected one of {', '.join(registry)}; got {tag!r}")
    rest = {k: v for k, v in value.items() if k != key}
    cls = registry[tag]
    return load(cls, rest, path, base=base if isinstance(base, cls) else None, extra_keys=(key,))


def load(cls: type, data: Any, path: str = "", *, base: Any = None, extra_keys: tuple[str, ...] = ()) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``data`` (see the module doc). ``base``: an
    instance whose values stand for the keys ``data`` leaves out (default: the fields' defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            path, f"expected a mapping with the fields {', '.join(yaml_fields(cls))}, got {data!r}"
        )
    allowed = yaml_fields(cls)
    unknown = [str(k) for k in data if k not in allowed and k not in extra_keys]
    if unknown:
        where = ", ".join(repr(_join(path, k)) for k in unknown)
        raise ConfigError(
            _join(path, unknown[0]),
            f"unknown field{'s' if len(unknown) > 1 else ''} {where}; allowed: {', '.join(allowed)}",
        )
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in _init_fields(cls):
        given = getattr(base, f.name) if base is not None else _default(f)
        if f.metadata.get("inline"):
            inner = hints[f.name]
            keys = yaml_fields(inner)
            kwargs[f.name] = load(inner, {k: v for k, v in data.items() if k in keys}, path, base=given)
            continue
        key = yaml_key(cls, f.name)
        p = _join(path, key)
        if key not in data:
            if given is dataclasses.MISSING:
                raise ConfigError(p, f"is required ({_type_name(hints[f.name])})")
            kwargs[f.name] = given
            continue
        value = data[key]
        if "tagged" in f.metadata:
            value = _load_tagged(f, value, p, None if given is dataclasses.MISSING else given)
        else:
            dc = dataclasses.is_dataclass(hints[f.name]) and not isinstance(hints[f.name], type(None))
            if value is None and dc:
                value = given if given is not dataclasses.MISSING else {}
            value = validate(hints[f.name], value, p, None if given is dataclasses.MISSING else given)
        if "check" in f.metadata:
            try:
                value = f.metadata["check"](value, p)
            except ConfigError:
                raise
            except (ValueError, TypeError) as err:
                raise ConfigError(p, str(err)) from None
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if path and not err.path.startswith(path):
            raise ConfigError(_join(path, err.path), str(err).split(": ", 1)[-1]) from None
        raise
    except (ValueError, TypeError) as err:
        field_path, message = _locate(cls, path, _rename_in_message(cls, str(err)))
        raise ConfigError(field_path, message) from None


def _locate(cls: type, path: str, message: str) -> tuple[str, str]:
    """The full path of the field a dataclass's own check names first (``ga`` + "rec_rate must be …" →
    ``ga.rec_rate``, "must be …"); the section's path when it names none."""
    best = None
    for key in yaml_fields(cls):
        m = re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message)
        if m and (best is None or m.start() < best[1]):
            best = (key, m.start())
    if best is None:
        return path, message
    key, start = best
    if start == 0 and message[len(key) : len(key) + 1] == " ":
        message = message[len(key) + 1 :]
    return _join(path, key), message


def load_yaml(path: str | Path) -> dict:
    """The top-level mapping of a YAML file (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with path.open() as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(str(path), f"not valid YAML{where}: {what}; fix the file") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not a text file (not UTF-8); pass a YAML config") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(str(path), "must be a YAML mapping at the top level")
    return data


# ----------------------------------------------------------------------------------------------
# back to mappings


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tag_of(f: dataclasses.Field, value: Any) -> dict:
    if "tagged" not in f.metadata:
        return {}
    key, registry = f.metadata["tagged"]
    return {key: next(t for t, c in registry.items() if isinstance(value, c))}


def to_dict(obj: Any) -> dict:
    """The YAML mapping of a config dataclass (canonical keys, lists, inline sections flattened; a field
    that is ``None`` by default and still ``None`` — an absent optional section — is left out)."""
    out: dict[str, Any] = {}
    cls = type(obj)
    for f in _init_fields(cls):
        value = getattr(obj, f.name)
        if value is None and f.default is None:
            continue
        if f.metadata.get("inline"):
            out.update(to_dict(value))
            continue
        plain = _plain(value)
        if isinstance(plain, dict) and "tagged" in f.metadata:
            plain = {**_tag_of(f, value), **plain}
        out[yaml_key(cls, f.name)] = plain
    return out


def nondefault(obj: Any, base: Any = None, *, hashed_only: bool = True) -> dict:
    """The fields of the config dataclass ``obj`` that differ from ``base`` (default: the fields'
    defaults), recursively, in YAML form; fields marked ``hashed: False`` are left out. A tagged section
    always keeps its tag. This is what identifies a job in the run store: adding a field with a default
    changes no job's key."""
    out: dict[str, Any] = {}
    cls = type(obj)
    for f in _init_fields(cls):
        if hashed_only and f.metadata.get("hashed", True) is False:
            continue
        value = getattr(obj, f.name)
        ref = getattr(base, f.name) if base is not None else _default(f)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            same_kind = ref is not dataclasses.MISSING and type(ref) is type(value)
            sub = nondefault(value, ref if same_kind else None, hashed_only=hashed_only)
            if f.metadata.get("inline"):
                out.update(sub)
                continue
            if sub or not same_kind or _tag_of(f, value):
                out[yaml_key(cls, f.name)] = {**_tag_of(f, value), **sub}
            continue
        if ref is not dataclasses.MISSING and _plain(value) == _plain(ref):
            continue
        out[yaml_key(cls, f.name)] = _plain(value)
    return out


# ----------------------------------------------------------------------------------------------
# the reference (docs/configs.md)


def _field_docs(cls: type, supplement: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """One line per field: its ``doc`` metadata, else its entry in the class docstring (``name: text`` or
    ``a, b: text``), else the comment at the end of its line in the source."""
    import inspect

    docs: dict[str, str] = {}
    text = inspect.getdoc(cls) or ""
    current: list[str] = []
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:, [a-z_]+)*): (.+)$", line)
        if m:
            current = m.group(1).split(", ")
            for name in current:
                docs[name] = m.group(2).strip()
        elif current and line.startswith("    "):
            for name in current:
                docs[name] += " " + line.strip()
        else:
            current = []
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        source = ""
    for m in re.finditer(r"^    ([a-z_]+): [^\n#]+#\s*(.+)$", source, flags=re.M):
        docs.setdefault(m.group(1), m.group(2).strip())
    for f in dataclasses.fields(cls):
        if f.metadata.get("doc"):
            docs[f.name] = f.metadata["doc"]
    for name, text in supplement.get(f"{cls.__module__}.{cls.__qualname__}", {}).items():
        docs.setdefault(name, text)
    return {k: _rename_in_message(cls, v) for k, v in docs.items()}


def _short_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_short_type(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_short_type(typing.get_args(tp)[0])}"
    if origin in (dict, Mapping) or tp is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(tp, getattr(tp, "__name__", str(tp)))


def _default_text(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=1000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def reference_rows(
    cls: type, prefix: str = "", base: Any = None, supplement: Mapping[str, Mapping[str, str]] | None = None
) -> list[tuple[str, str, str, str]]:
    """``(path, type, default, doc)`` of every field of ``cls`` below ``prefix``, nested sections
    flattened (``ga.population_size``, ``networks.<label>.sizes``, ``edge_popup[].kept_fraction``,
    ``trainer.*`` per ``type``)."""
    rows: list[tuple[str, str, str, str]] = []
    supplement = supplement or {}
    docs = _field_docs(cls, supplement)
    hints = _hints(cls)
    for f in _init_fields(cls):
        tp = hints[f.name]
        default = getattr(base, f.name) if base is not None else _default(f)
        if f.metadata.get("inline"):
            rows += reference_rows(
                tp, prefix, default if default is not dataclasses.MISSING else None, supplement
            )
            continue
        path = _join(prefix, yaml_key(cls, f.name))
        doc = docs.get(f.name, "")
        if "tagged" in f.metadata:
            key, registry = f.metadata["tagged"]
            rows.append((path, "mapping", f"{key}: {next(iter(registry))}", doc))
            for tag, sub in registry.items():
                rows.append(
                    (f"{path}.{key}", tag, "", f"— the fields of `{key}: {tag}` ({sub.__name__}) follow")
                )
                sub_base = default if isinstance(default, sub) else None
                rows += reference_rows(sub, path, sub_base, supplement)
            continue
        args = [a for a in (typing.get_args(tp) or (tp,)) if a is not type(None)]
        nested = [a for a in args if dataclasses.is_dataclass(a)]
        if nested and typing.get_origin(tp) not in (tuple, dict):
            rows.append(
                (path, "mapping" + (" or null" if type(None) in typing.get_args(tp) else ""), "", doc)
            )
            sub_base = (
                default if dataclasses.is_dataclass(default) and not isinstance(default, type) else None
            )
            rows += reference_rows(nested[0], path, sub_base, supplement)
            continue
        inner = typing.get_args(tp)
        if typing.get_origin(tp) is tuple and inner and dataclasses.is_dataclass(inner[0]):
            rows.append((path, "list of mappings", _default_text(default), doc))
            rows += reference_rows(inner[0], f"{path}[]", None, supplement)
            continue
        if typing.get_origin(tp) is dict and len(inner) == 2 and dataclasses.is_dataclass(inner[1]):
            rows.append((path, "mapping label → mapping", _default_text(default), doc))
            rows += reference_rows(inner[1], f"{path}.<label>", None, supplement)
            continue
        rows.append((path, _short_type(tp), _default_text(default), doc))
    return rows


def reference_markdown(
    sections: list[tuple[str, str, type]], supplement: Mapping[str, Mapping[str, str]] | None = None
) -> str:
    """The Markdown reference of ``(title, intro, config class)`` sections; ``supplement``: descriptions of
    library fields (``module.qualname`` → field → text) whose classes document them elsewhere."""
    out = []
    for title, intro, cls in sections:
        out += [f"## {title}", "", intro, "", "| field | type | default | what |", "|---|---|---|---|"]
        for path, tp, default, doc in reference_rows(cls, supplement=supplement):
            cell = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
            out.append(f"| `{path}` | {cell(tp)} | {cell(default)} | {cell(doc)} |")
        out.append("")
    return "\n".join(out)
