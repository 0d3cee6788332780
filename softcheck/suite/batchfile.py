"""Batch files: many groups of cases (softcheck's own, or a candidate's) in one run.

A batch file is TOML, or JSON with the same structure: a list ``case`` of groups.  A group's
keys are the command-line options with underscores; any of them may be a list, and the group
runs every combination (for the axis options ``classes, batch, dtype, targets, reduction,
regime`` a list is simply the axis' values).  ``target`` (a TARGET, a path relative to the
file) makes it a candidate group; ``name`` names it (default: derived from its options)::

    [[case]]
    name = "llm-style"
    classes = [1000, 32000]
    weight = "random"
    ignore_index = -100
    label_smoothing = [0.0, 0.1]
    target = "kernels/ce.py:grad"

Every problem (unreadable file, unknown key, wrong type, a value out of range) is a
:class:`SoftcheckError` naming the file, the group and the key, raised before any case runs
(the engine loads the TARGETs, with the same naming).  Reading a file runs nothing.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import re
from dataclasses import dataclass

from ..spec import SoftcheckError
from .config import AXES, CALL_KEYS, CONFIG_KEYS, REPEATED_CALL_KEYS, Config
_INT, _NUM, _STR = "an integer", "a number", "a string"
# key -> (type, may be null).  Axes take one value or a list (the axis); other keys take one
# value or a list of values (crossed).
KEYS: dict[str, tuple[str, bool]] = {
    "classes": (_INT, False), "batch": (_INT, False), "dtype": (_STR, False),
    "targets": (_STR, False), "reduction": (_STR, False), "regime": (_STR, False),
    "seed": (_INT, False), "weight": ("weight", True), "weight_dtype": (_STR, True),
    "ignore_index": (_INT, True),
    "label_smoothing": (_NUM, False), "smoothing_convention": (_STR, False),
    "temperature": (_NUM, False), "softcap": (_NUM, True), "z_loss": (_NUM, False),
    "mean_over": ("mean_over", False), "logit_scale": (_NUM, False),
    "all_ignored": (_STR, False), "upstream_check": (_STR, False),
    "fd": (_STR, True), "order": (_INT, False), "probes": (_INT, False),
    "fd_budget": (_NUM, False), "tolerance": (_STR, False), "timeout": (_NUM, True),
    "atol": (_NUM, True), "rtol": (_NUM, True), "inputs": (_STR, True),
    "hidden": (_INT, True), "bias": ("a boolean", False), "shape": (_STR, False),
    "shift": (_INT, False), "suite": (_STR, False), "layout": (_STR, True),
    "ignored_fraction": (_NUM, True), "huge": ("a boolean", False),
}
assert set(KEYS) == {*CONFIG_KEYS, "timeout"}, "batch keys are the options (suite/config.py)"
META = ("name", "target", "hvp")
#: how the group's target is called (check's --convention ...): strings; rename, kwarg and
#: off_value also a list (kwarg and off_value also a table NAME = VALUE)
CALL = CALL_KEYS
WEIGHT_HELP = "'random' or a list of C numbers"


@dataclass(frozen=True)
class Group:
    """One ``[[case]]`` of the file, expanded: a Config per combination of its list values."""

    name: str
    configs: tuple[Config, ...]
    target: str | None = None      # as written in the file
    hvp: str | None = None
    timeout: float | None = None
    where: str = ""                # "FILE: group i ('name')", for messages
    call: tuple = ()               # (key, value) of the CALL keys given (validated at load)


@dataclass(frozen=True)
class Plan:
    path: str
    groups: tuple[Group, ...]

    @property
    def base(self) -> str:
        """The folder TARGETs are relative to."""
        return os.path.dirname(os.path.abspath(self.path))


def read(path: str) -> list[dict]:
    """The groups of a batch file, as dicts (TOML by default, JSON for ``.json``)."""
    if not os.path.isfile(path):
        raise SoftcheckError(f"batch file {path} does not exist")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".json"):
            data = json.loads(raw.decode("utf-8"))
        else:
            import tomllib

            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:   # JSONDecodeError, TOMLDecodeError
        kind = "JSON" if path.endswith(".json") else "TOML"
        raise SoftcheckError(f"{path}: not valid {kind}: {e}") from e
    if not isinstance(data, dict):
        raise SoftcheckError(f"{path}: the top level must be a table with a list 'case'")
    extra = sorted(set(data) - {"case"})
    if extra:
        raise SoftcheckError(f"{path}: unknown top-level key {extra[0]!r}: the file holds only "
                             "'case', a list of groups ([[case]] in TOML)")
    groups = data.get("case")
    if not isinstance(groups, list) or not groups:
        raise SoftcheckError(f"{path}: no groups: add at least one [[case]] table "
                             "(JSON: \"case\": [{...}])")
    for i, g in enumerate(groups, 1):
        if not isinstance(g, dict):
            raise SoftcheckError(f"{path}: group {i}: each case must be a table of options")
    return groups


def plan(path: str) -> Plan:
    """Read, check and expand a batch file.  Raises before any work."""
    groups = read(path)
    out, names = [], set()
    for i, g in enumerate(groups, 1):
        where = f"{path}: group {i}" + (f" ({g['name']!r})" if isinstance(g.get("name"), str) else "")
        out.append(_group(g, where, names))
    return Plan(path, tuple(out))


def _group(g: dict, where: str, names: set) -> Group:
    for k in g:
        if k not in KEYS and k not in META and k not in CALL:
            near = difflib.get_close_matches(str(k).replace("-", "_"), (*KEYS, *META, *CALL),
                                             n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise SoftcheckError(f"{where}: unknown key {k!r}{hint}; keys are "
                                 f"{', '.join((*META, *KEYS, *CALL))}")
    for k in (*META, *CALL):
        v = g.get(k)
        ok = isinstance(v, str) or (k in REPEATED_CALL_KEYS and isinstance(v, list)
                                    and all(isinstance(x, str) for x in v)) or (
            k in ("kwarg", "off_value") and isinstance(v, dict)) or (
            k == "tensor_parallel" and isinstance(v, int) and not isinstance(v, bool))
        if k in g and not ok:
            kind = ("a string, a list of NAME=VALUE strings or a table" if k in
                    ("kwarg", "off_value") else "a string")
            raise SoftcheckError(f"{where}: key {k!r} must be {kind}, got {_show(g[k])}")
    if any(k in g for k in CALL) and "target" not in g:
        raise SoftcheckError(f"{where}: keys {', '.join(CALL)} describe how a 'target' is "
                             "called: this group has none")
    values = {k: _values(k, g[k], where) for k in KEYS if k in g}
    crossed = [k for k in values if k not in AXES and len(values[k]) > 1]
    timeouts = values.pop("timeout", [None])
    if len(timeouts) > 1:
        raise SoftcheckError(f"{where}: key 'timeout' takes one number, not a list")
    timeout = timeouts[0]
    if timeout is not None and not timeout >= 0:
        raise SoftcheckError(f"{where}: key 'timeout' must be >= 0 seconds (0: no limit), "
                             f"got {timeout!r}")

    name = g.get("name") or _default_name(g)
    unique, k = name, 2
    while unique in names:
        unique, k = f"{name} #{k}", k + 1
    names.add(unique)

    if "hvp" in g and "target" not in g:
        raise SoftcheckError(f"{where}: key 'hvp' needs a 'target'")

    scalars = [k for k in values if k not in AXES]
    axes = {k: tuple(values[k]) for k in AXES if k in values}
    configs = []
    for combo in itertools.product(*(values[k] for k in scalars)):
        opts = dict(zip(scalars, combo))
        tag = ",".join(f"{k}={_short(opts[k])}" for k in crossed) or None
        try:
            cfg = Config(**axes, **opts, group=unique, tag=tag)
            cfg.validate()
        except SoftcheckError as e:
            msg = re.sub(r"--([a-z][a-z-]*)", lambda m: "key '" + m.group(1).replace("-", "_") + "'",
                         str(e))
            raise SoftcheckError(f"{where}: {msg}") from None
        except TypeError as e:
            raise SoftcheckError(f"{where}: {e}") from None
        configs.append(cfg)
    call = tuple((k, tuple(g[k]) if isinstance(g[k], list) else
                  tuple(g[k].items()) if isinstance(g[k], dict) else g[k]) for k in CALL if k in g)
    return Group(unique, tuple(configs), g.get("target"), g.get("hvp"), timeout, where, call)


def _values(key: str, v, where: str) -> list:
    """The values of one key as a list (one element unless the file gave a list)."""
    kind, nullable = KEYS[key]
    if kind == "mean_over":          # "weight" | "valid" | "batch" | a whole number
        items = v if isinstance(v, list) else [v]
        if not items or not all(isinstance(x, str) or (isinstance(x, int) and not
                                                       isinstance(x, bool)) for x in items):
            raise SoftcheckError(f"{where}: key 'mean_over' must be a string or a whole number "
                                 f"(or a list of them), got {_show(v)}")
        return items
    if kind == "weight":
        if isinstance(v, list) and v and all(isinstance(x, (list, str)) or x is None for x in v):
            return [_weight(x, where) for x in v]          # a list of weights: crossed
        return [_weight(v, where)]
    items = v if isinstance(v, list) else [v]
    if isinstance(v, list) and not v:
        raise SoftcheckError(f"{where}: key {key!r} is an empty list")
    if kind == _STR and not isinstance(v, list) and isinstance(v, str) and key in AXES:
        items = [s.strip() for s in v.split(",")]           # "float64,float32" as on the CLI
    out = []
    for x in items:
        if x is None and nullable:
            out.append(None)
        elif kind == _INT and isinstance(x, int) and not isinstance(x, bool):
            out.append(x)
        elif kind == _NUM and isinstance(x, (int, float)) and not isinstance(x, bool):
            out.append(float(x))
        elif kind == _STR and isinstance(x, str):
            out.append(x)
        elif kind == "a boolean" and isinstance(x, bool):
            out.append(x)
        else:
            raise SoftcheckError(f"{where}: key {key!r} must be {kind} or a list of them, "
                                 f"got {_show(x)}")
    return out


def _weight(v, where: str):
    if v is None or v == "random":
        return v
    if isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                         for x in v):
        return tuple(float(x) for x in v)
    raise SoftcheckError(f"{where}: key 'weight' must be {WEIGHT_HELP}, got {_show(v)}")


def _show(v) -> str:
    try:
        return json.dumps(v)
    except (TypeError, ValueError):
        return repr(v)


def _short(v) -> str:
    if isinstance(v, tuple):
        return "[" + ",".join(f"{x:g}" for x in v) + "]"
    return str(v)


def _default_name(g: dict) -> str:
    head = os.path.basename(g["target"]) if "target" in g else "run"
    opts = " ".join(f"{k}={_short(tuple(v) if k == 'weight' and isinstance(v, list) else v)}"
                    for k, v in g.items() if k not in META and k not in CALL)
    return f"{head} {opts}".strip()
