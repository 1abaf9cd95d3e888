"""The command line, checked before ``@hydra.main`` runs: Hydra's own errors become one line, and the
run's pre-flight happens here, once, before Hydra creates any folder.

Hydra prints several lines for an unknown key, a wrong type or a bad override, and it creates the run
directory before our code sees the config. Composing the same overrides once with Hydra's compose API
first lets us print ``error: <what> (<fix>)`` and exit before anything is written. The run directory
resolved here (``outputs/${now:...}`` by default) is handed to Hydra as ``hydra.run.dir``, so the
pre-flight's result is the run Hydra then starts. ``HYDRA_FULL_ERROR=1`` or ``DISTGAN_DEBUG=1`` skips
the translation and shows Hydra's own error and traceback.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from distgan.cli import debug, fail
from distgan.compose import check_group_choices, compose, to_config
from distgan.errors import UserError
from distgan.files import probe_writable
from distgan.rundir import RunDir

# Hydra flags after which the command line is not a training run (or uses another config): left to Hydra.
_HYDRA_ONLY = {"-h", "--help", "--hydra-help", "-i", "--info", "-c", "--cfg", "-sc", "--shell-completion",
               "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-p", "--package"}
_MULTIRUN = {"-m", "--multirun"}


def check_command_line(argv: list[str]) -> list[str]:
    """Exit with one ``error:`` line if the overrides in ``argv`` cannot make a valid run; else return
    ``argv`` with the checked run (or sweep) directory pinned for Hydra."""
    if debug() or any(a.split("=")[0] in _HYDRA_ONLY for a in argv):
        return argv
    multirun = any(a in _MULTIRUN for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        check_group_choices(argv)
        dcfg = _compose(overrides, multirun)
    except UserError as e:
        fail(str(e))
    except Exception as e:  # noqa: BLE001 - hydra and omegaconf raise many types; all mean bad input
        fail(_one_line(e))
    _check_known_keys(dcfg)
    run_dir = _check_output_dir(dcfg, multirun)
    if run_dir is None:
        return argv
    from distgan.launcher.preflight import preflight  # after the cheap checks: it imports more

    try:
        if not multirun:
            RunDir(run_dir).check_unlocked()  # one run per folder: before anything is read or written
        preflight(to_config(dcfg, run_dir), typed=_typed_model_keys(overrides))  # typed: checked against init=
    except UserError as e:
        fail(str(e))
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    return [a for a in argv if not a.startswith(f"{key}=")] + [f"{key}={_quoted(str(run_dir.absolute()))}"]


def _typed_model_keys(overrides: list[str]) -> set[str]:
    """The model keys the command line sets (``model=NAME``: ``name``; ``model.KEY=``: ``KEY``), which
    ``init=`` must not contradict (distgan/warm_start.py)."""
    keys = set()
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key == "model":
            keys.add("name")
        elif key.startswith("model."):
            keys.add(key.split(".", 1)[1])
    return keys


def _quoted(value: str) -> str:
    """A path as a Hydra override value: plain when the grammar allows it, else single-quoted."""
    if re.fullmatch(r"[\w/.\-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _compose(overrides: list[str], multirun: bool) -> DictConfig:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if multirun:  # a sweep: check its first point (Hydra itself checks the rest when it runs them)
        parsed = OverridesParser.create().parse_overrides(overrides)
        overrides = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"
                     if o.is_sweep_override() else o.input_line for o in parsed]
    overrides = [o for o in overrides if not o.startswith("hydra/")]  # launcher/sweeper plugins: Hydra's
    return compose(overrides, return_hydra_config=True)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if m:
        return _unknown_key(m.group(1))
    m = re.search(r"Could not find '([^']+)'", text)
    if m:
        return f"no config {m.group(1)!r}; check the group name and option (e.g. model=mlp)"
    first = text.splitlines()[0] if text else type(e).__name__
    cause = e.__cause__ or e.__context__
    detail = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    if "could not be converted" in detail or "Value '" in detail:
        return f"{first.replace('Error merging override ', 'bad value in ')}: {detail}"
    hint = ""
    if "parsing override" in first:
        first, hint = first.replace("Error parsing override", "bad override"), " (write key=value; see README.md)"
    elif first.startswith("Ambiguous value"):
        hint = " (add -m to sweep over the values, or write key=[a,b] for a list)"
    return f"{first}{': ' + detail if detail and detail not in first else ''}{hint}"


def _sub_schema(schema, name: str):
    """The dataclass type of field ``name`` of ``schema``, or None (a plain value or dict field)."""
    for f in dataclasses.fields(schema):
        if f.name == name and callable(f.default_factory):
            value = f.default_factory()
            return type(value) if dataclasses.is_dataclass(value) else None
    return None


def _unknown_key(key: str) -> str:
    from distgan.config import Config

    schema, *parents = Config, *key.split(".")[:-1]
    for part in parents:
        schema = _sub_schema(schema, part) if schema else None
    known = f"; known keys here: {', '.join(f.name for f in dataclasses.fields(schema))}" if schema else ""
    return f"unknown key {key!r}{known} (see README.md)"


def _check_known_keys(dcfg: DictConfig) -> None:
    """``+train.foo=1`` slips past Hydra's struct check: every key must belong to the typed schema."""
    from distgan.config import Config

    def walk(node: DictConfig, schema, prefix: str) -> None:
        names = {f.name for f in dataclasses.fields(schema)}
        for key in node.keys():
            if key not in names:
                fail(_unknown_key(f"{prefix}{key}"))
            sub = _sub_schema(schema, key)
            if sub is not None and isinstance(node._get_node(key), DictConfig):
                walk(node._get_node(key), sub, f"{prefix}{key}.")

    walk(OmegaConf.masked_copy(dcfg, [k for k in dcfg.keys() if k != "hydra"]), Config, "")


def _check_output_dir(dcfg: DictConfig, multirun: bool) -> Path | None:
    """The run (or sweep) directory must be creatable; probed with a temporary folder, removed again.
    Returns it, or None if only Hydra's runtime can resolve it."""
    try:
        path = Path(str(OmegaConf.select(dcfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")))
    except Exception:  # noqa: BLE001 - an interpolation only Hydra's runtime can resolve: Hydra checks it
        return None
    what = "sweep" if multirun else "run"
    try:
        probe_writable(path)
    except NotADirectoryError as e:
        fail(f"{what} directory {path} cannot be created: {e}; set hydra.{what}.dir")
    except OSError as e:
        where = Path(e.filename).parent if e.filename else path
        fail(f"{what} directory {path} is not writable ({e.strerror} in {where}); set hydra.{what}.dir "
             "to a folder you can write")
    return path
