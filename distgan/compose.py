"""The one composer: configs/ plus command-line overrides -> the typed :class:`~distgan.config.Config`.

``launch/run.py`` hands Hydra's own composition (``@hydra.main``) to :func:`to_config`; every other place
that needs a config from overrides — the command-line pre-check, the plain-sbatch entry, benchmarks,
tests — calls :func:`compose`. The configs ship inside the package (``distgan/configs`` in a wheel) and
are the repository's top-level ``configs/`` folder in a clone.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from distgan.config import Config
from distgan.errors import UserError

GROUPS = ("cluster", "model", "dataset", "loss", "tune", "experiment")


def _config_dir() -> Path:
    package = Path(__file__).resolve().parent  # distgan/
    for candidate in (package / "configs", package.parent / "configs"):  # installed wheel, then a clone
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"distgan's configs are missing: neither {package / 'configs'} nor {package.parent / 'configs'}")


CONFIG_DIR = _config_dir()


def register_schema() -> None:
    """The typed schema every YAML merges into (configs/config.yaml lists ``schema`` first)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="schema", node=Config)


def compose(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """configs/config.yaml with ``overrides`` (Hydra's compose API; not inside a running Hydra app)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=quote_search_spaces(overrides),
                             return_hydra_config=return_hydra_config)


_SPACE_CALL = re.compile(r"(?<![\w'\"])((?:choice|uniform|loguniform|grid)\([^()'\"]*\))")


def quote_search_spaces(argv: list[str]) -> list[str]:
    """``'tune.params={train.lr_d: choice(1e-4,2e-4)}'`` as typed: Hydra's grammar would call ``choice``
    (a sweep, not allowed inside a dict) and knows no ``uniform``/``loguniform``/``grid``, so the search
    spaces inside a ``tune.params=`` value are quoted into strings before Hydra parses it."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") == "tune.params":
            arg = f"{key}={_SPACE_CALL.sub(lambda m: repr(m.group(1)), value)}"
        out.append(arg)
    return out


def to_config(dcfg: DictConfig, run_dir: str | Path) -> Config:
    """A composed config as the plain dataclass workers receive, with an absolute run directory."""
    body = OmegaConf.masked_copy(dcfg, [k for k in dcfg.keys() if k != "hydra"]) if "hydra" in dcfg else dcfg
    obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), body))
    return replace(obj, run_dir=str(Path(run_dir).resolve()))


def load_config(overrides: list[str], run_dir: str | Path) -> Config:
    """:func:`compose` then :func:`to_config`."""
    return to_config(compose(overrides), run_dir)


def check_group_choices(argv: list[str]) -> None:
    """``model=foo`` etc.: one clear UserError instead of Hydra's multi-line listing."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.lstrip("+~").split("=", 1)
        if key not in GROUPS or value in ("null", ""):
            continue
        options = sorted(p.stem for p in (CONFIG_DIR / key).glob("*.yaml"))
        for choice in value.split(","):  # a multirun sweep lists several
            if choice not in options:
                raise UserError(f"unknown {key} {choice!r}; choose one of: {', '.join(options)}")
