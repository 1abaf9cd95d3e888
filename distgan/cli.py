"""What distgan's command-line programs share: the one-line error, ``key=value`` arguments over a typed
schema (defaults in ``configs/<name>.yaml``) and the generator of a checkpoint.

``distgan-sample`` / ``distgan-evaluate`` (``launch/sample.py``, ``launch/evaluate.py``) use OmegaConf
alone (Hydra's config layer), not ``@hydra.main``: they write nothing but their output (no ``outputs/``
folder, no log file) and answer a bad argument in one line.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

from distgan.errors import UserError, first_line


def fail(message: str, code: int = 2) -> None:
    """``error: <message>`` on stderr and exit (2: bad input; 1: a failed run; 130: interrupted)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def debug() -> bool:
    """The traceback instead of the one line: ``HYDRA_FULL_ERROR=1`` (Hydra's own switch) or ``DISTGAN_DEBUG=1``."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("DISTGAN_DEBUG") == "1"


def run_main(main: Callable[[list[str]], None]) -> None:
    """``main(sys.argv[1:])``; a UserError becomes ``error: <one line>`` and exit 2."""
    try:
        main(sys.argv[1:])
    except UserError as e:
        if debug():
            raise
        fail(str(e))


def parse(argv: list[str], schema: type, name: str, flags: tuple[str, ...] = ()) -> Any:
    """``key=value`` arguments (and ``--flag`` for each boolean in ``flags``) -> a ``schema`` instance with
    the defaults of ``configs/<name>.yaml``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from distgan.compose import CONFIG_DIR

    known = {f.name for f in dataclasses.fields(schema)}
    dotlist = []
    for arg in argv:
        if arg.startswith("--") and arg[2:] in flags:
            dotlist.append(f"{arg[2:]}=true")
            continue
        if arg in ("-h", "--help"):
            print((CONFIG_DIR / f"{name}.yaml").read_text())
            sys.exit(0)
        key = arg.split("=", 1)[0]
        if "=" not in arg or key.split(".", 1)[0] not in known:
            raise UserError(f"unknown argument {arg!r}; use key=value with keys: {', '.join(sorted(known))}")
        dotlist.append(arg)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(CONFIG_DIR / f"{name}.yaml"),
                                 OmegaConf.from_dotlist(dotlist))
        args = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise UserError(first_line(e)) from None
    missing = [f.name for f in dataclasses.fields(schema) if getattr(args, f.name) is None
               and f.metadata.get("required")]
    if missing:
        raise UserError(f"missing {', '.join(f'{m}=...' for m in missing)}")
    return args


def required() -> Any:
    """A schema field the user must give (``missing checkpoint=...`` otherwise)."""
    return dataclasses.field(default=None, metadata={"required": True})


def load_generator(path: str, ema: bool = True, device: str = "cpu"):
    """(G in eval mode, the run's Config, the checkpoint's TrainState); G_ema when present and ``ema``.
    ``state.used_ema`` is added: whether G_ema was used. A network pickle (``.pkl``: StyleGAN2-ADA-pytorch /
    StyleGAN3, read without running its code by :mod:`distgan.pretrained`) gives a Config of ``model=stylegan2``
    with its architecture and a TrainState of step 0."""
    from distgan import checkpoint, pretrained
    from distgan.config import from_dict
    from distgan.models import build_models
    from distgan.state import TrainState

    if pretrained.is_pickle(path):
        return _load_pickle_generator(path, ema, device)
    state = TrainState.from_dict(checkpoint.load(path, map_location=device), path)
    state.require("config", "data_shape", source=path, purpose="draw samples")
    try:
        cfg = from_dict(state.config)
        G, _ = build_models(cfg.model, tuple(state.data_shape), int(state.num_classes or 0))
        G.load_state_dict(state.G_ema if ema and state.G_ema is not None else state.G)
    except (KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"checkpoint {path} is not a distgan checkpoint this version can read "
                        f"({type(e).__name__}: {first_line(e, 120)})") from None
    state.used_ema = ema and state.G_ema is not None
    return G.to(device).eval().requires_grad_(False), cfg, state


def _load_pickle_generator(path: str, ema: bool, device: str):
    from distgan import pretrained
    from distgan.config import Config, DatasetConfig
    from distgan.models import build_models
    from distgan.state import TrainState

    p = pretrained.load(path)
    use_ema = ema and p.G_ema_state is not None
    G, _ = build_models(p.cfg_model, p.data_shape, p.num_classes)
    G.load_state_dict(p.G_ema_state if use_ema else p.G_state)
    kwargs = p.info.get("training_set_kwargs") or {}
    # the data set the pickle was trained on, as NVIDIA recorded it (a zip or folder: evaluate's reference)
    root = kwargs.get("path")
    name = "zip" if str(root or "").endswith(".zip") else "image_folder"
    cfg = Config(model=p.cfg_model, dataset=DatasetConfig(name=name, root=root, resolution=p.data_shape[1],
                                                          channels=p.data_shape[0], xflip=bool(kwargs.get("xflip"))))
    state = TrainState(G={}, D={}, step=0, config=None, data_shape=list(p.data_shape), num_classes=p.num_classes)
    state.used_ema = use_ema
    return G.to(device).eval().requires_grad_(False), cfg, state
