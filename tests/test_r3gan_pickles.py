"""R3GAN's snapshot pickles through distgan's safe reader (distgan/pretrained/r3gan.py): a pickle written in
R3GAN's format by this file's own writer (R3GAN's class names, its modules' state) gives the networks it
holds, the same images, its bf16 stages and their 8-bit images; a pickle of other code is refused."""

from __future__ import annotations

import pytest
import torch

from distgan.errors import UserError
from distgan.models import build_models
from distgan.models import r3gan as r3
from tests.test_r3gan import tiny


def _fake_r3gan_modules(monkeypatch) -> dict:
    """Empty stand-ins for R3GAN's classes under their module names, so pickle writes R3GAN's globals."""
    import sys
    import types

    from distgan.pretrained.r3gan import NETWORKS

    classes = {}
    names = {"training.networks": ["Generator", "Discriminator"], "R3GAN.Networks": list(NETWORKS),
             "R3GAN.FusedOperators": ["BiasedActivationCUDA"],
             "R3GAN.Resamplers": ["InterpolativeUpsamplerCUDA", "InterpolativeDownsamplerCUDA"]}
    for parent in ("training", "R3GAN"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    for module, members in names.items():
        mod = types.ModuleType(module)
        for name in members:
            cls = type(name, (), {"__module__": module})
            setattr(mod, name, cls)
            classes[(module, name)] = cls
        monkeypatch.setitem(sys.modules, module, mod)
    return classes


def _as_r3gan(module, classes: dict, role: str):
    """A copy of a distgan r3gan module tree whose classes are R3GAN's (state as R3GAN's objects hold it)."""
    import collections

    kind = type(module)
    table = {r3.R3Generator: "R3GAN.Networks.Generator", r3.R3Discriminator: "R3GAN.Networks.Discriminator",
             r3.BiasedActivation: "R3GAN.FusedOperators.BiasedActivationCUDA"}
    state = dict(module.__dict__)
    state["_modules"] = collections.OrderedDict((k, _as_r3gan(v, classes, role)) for k, v in module._modules.items())
    if kind is r3.Stage:
        name, state["DataType"] = f"R3GAN.Networks.{role}Stage", state.pop("dtype") or torch.float32
    elif kind is r3.Resampler:
        name = f"R3GAN.Resamplers.Interpolative{'Up' if state.pop('up') else 'Down'}samplerCUDA"
    elif kind in table:
        name = table[kind]
        state.pop("num_classes", None)
        state.pop("latent_dim", None)
    elif kind.__module__ == r3.__name__:
        name = f"R3GAN.Networks.{kind.__name__}"
    else:  # torch's own Conv2d, Linear, ModuleList
        name = None
    cls = kind if name is None else classes[tuple(name.rsplit(".", 1))]
    out = object.__new__(cls)
    out.__dict__.update(state)
    return out


def _wrap(net, classes: dict, role: str, **attrs):
    import collections

    out = object.__new__(classes[("training.networks", "Generator" if role == "Generator" else "Discriminator")])
    inner = torch.nn.Module()
    out.__dict__.update(inner.__dict__)
    out.__dict__["_modules"] = collections.OrderedDict(Model=_as_r3gan(net, classes, role))
    out.__dict__.update(attrs)
    return out


def test_an_r3gan_snapshot_pickle_gives_the_same_images(tmp_path, monkeypatch):
    import copy
    import pickle

    from distgan.pretrained import r3gan as r3pkl
    from distgan.pretrained import unpickle

    torch.manual_seed(0)
    m = tiny(conditional=True)
    G, D = build_models(m, (3, 32, 32), 4)
    for net in (G, D):  # leave the zero-init identity: every layer matters
        for p in net.parameters():
            p.data.add_(torch.randn_like(p) * 0.05)
    G_ema = copy.deepcopy(G)
    for p in G_ema.parameters():
        p.data.mul_(0.9)
    classes = _fake_r3gan_modules(monkeypatch)
    snapshot = {"G": _wrap(G, classes, "Generator", z_dim=8, c_dim=4, img_resolution=32),
                "D": _wrap(D, classes, "Discriminator"),
                "G_ema": _wrap(G_ema, classes, "Generator", z_dim=8, c_dim=4, img_resolution=32),
                "training_set_kwargs": {"path": "cifar10.zip", "use_labels": True}, "cur_nimg": 1234}
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(pickle.dumps(snapshot, protocol=4))

    obj = unpickle.load(str(path))
    assert r3pkl.detect(obj)
    p = r3pkl.convert(obj, str(path))
    assert (p.cfg_model.widths, p.cfg_model.cardinalities, p.cfg_model.blocks) == (m.widths, m.cardinalities, m.blocks)
    assert p.data_shape == (3, 32, 32) and p.num_classes == 4 and p.info["cur_nimg"] == 1234
    G2, D2 = build_models(p.cfg_model, p.data_shape, p.num_classes)
    G2.load_state_dict(p.G_ema_state)
    D2.load_state_dict(p.D_state)
    z, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        assert torch.equal(G2(z, y), G_ema(z, y))
        assert torch.equal(D2(G_ema(z, y), y), D(G_ema(z, y), y))
    G2.load_state_dict(p.G_state)
    with torch.no_grad():
        assert torch.equal(G2(z, y), G(z, y))
    # the one reader every command uses (launch/sample.py, evaluate.py, init=) picks the R3GAN converter
    from distgan import pretrained
    from distgan.cli import load_generator

    loaded = pretrained.load(path)
    assert loaded.format == "r3gan" and loaded.cfg_model == p.cfg_model
    G3, _, _ = load_generator(str(path))
    with torch.no_grad():
        assert torch.equal(G3(z, y), G_ema(z, y))


def test_an_r3gan_pickle_with_bf16_stages_keeps_them_and_its_8_bit_images(tmp_path, monkeypatch):
    """R3GAN's presets pickle stages with DataType bfloat16: read as model.bf16_stages, and launch/sample.py's
    PNGs are made in bfloat16 (gen_images.py's x * 127.5 + 128 on its bfloat16 output)."""
    import pickle

    import numpy as np
    from PIL import Image

    from distgan.cli import load_generator
    from distgan.commands.sample import main as sample_main

    torch.manual_seed(1)
    G, D = build_models(tiny(bf16_stages=3), (3, 32, 32), 0)
    for p in G.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    classes = _fake_r3gan_modules(monkeypatch)
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _wrap(G, classes, "Generator", z_dim=8, c_dim=0, img_resolution=32),
                                   "D": _wrap(D, classes, "Discriminator")}, protocol=4))
    G2, cfg, _ = load_generator(str(path))
    assert cfg.model.bf16_stages == 3 and G2.output_dtype == torch.bfloat16
    sample_main([f"checkpoint={path}", "seeds=0-2", f"out={tmp_path / 'png'}/"])
    from distgan.latents import seed_z

    with torch.no_grad():
        x = G(seed_z([0, 1, 2], 8))
    want = (x.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
    fp32 = (x.float().permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
    assert not np.array_equal(want, fp32)  # the type of the conversion matters: this checks the right one
    for i, s in enumerate([0, 1, 2]):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / f"seed{s:04d}.png")), want[i])
    # G and D in another pattern than R3GAN's: one line
    G1, D1 = build_models(tiny(bf16_stages=1), (3, 32, 32), 0)
    path.write_bytes(pickle.dumps({"G_ema": _wrap(G1, classes, "Generator"), "D": _wrap(D, classes, "Discriminator")}))
    with pytest.raises(UserError, match="D computes 3 stages in bfloat16, G 1"):
        load_generator(str(path))


def test_a_pickle_of_other_code_is_refused(tmp_path):
    import pickle

    from distgan.pretrained import unpickle

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G": print}))
    with pytest.raises(UserError, match="refused builtins.print"):
        unpickle.load(str(path))
