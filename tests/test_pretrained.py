"""Issue 21: NVIDIA network pickles in (read without running their code), the networks made exact
(D's 8-layer label mapping, strided minibatch std, conv_clamp, saved noise maps), NVIDIA's seeds, and
``distgan-export`` back out. The pickles are written by tests/nvidia_pickle.py in NVIDIA's persistence format."""

from __future__ import annotations

import ast
import os
import pickle
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from distgan import pretrained
from distgan.cli import load_generator
from distgan.errors import UserError
from distgan.models import build_models
from distgan.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from distgan.models.stylegan2_layers import EqualConv2d, MinibatchStd, SynthesisLayer, seeded_noise
from distgan.pretrained.nvidia import from_nvidia, to_nvidia
from tests import nvidia_pickle as nvp

ROOT = Path(__file__).resolve().parents[1]
RES, Z, W, CLASSES = 32, 16, 16, 3


def _nets(classes=CLASSES, conv_clamp=256, seed=0):
    torch.manual_seed(seed)
    G = StyleGAN2Generator(RES, 3, 256, 32, 2, z_dim=Z, w_dim=W, num_classes=classes, conv_clamp=conv_clamp)
    D = StyleGAN2Discriminator(RES, 3, 256, 32, num_classes=classes, conv_clamp=conv_clamp)
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, SynthesisLayer):
                m.noise_strength.fill_(0.4)
                m.noise_const.normal_()  # not the seeded map: the pickle's must be the one used
        G.mapping.w_avg.normal_()
    return G.eval(), D.eval()


def _write(path, G, D, classes=CLASSES, conv_clamp=256, source=nvp.SOURCE, gk=None, dk=None, extra=None):
    gk = gk or nvp.g_kwargs(Z, W, RES, 3, classes, 2, 256, 32, conv_clamp)
    dk = dk or nvp.d_kwargs(RES, 3, classes, 256, 32, conv_clamp, 4)
    nvp.write_snapshot(path, to_nvidia(G.state_dict(), "G", RES), to_nvidia(D.state_dict(), "D", RES), gk, dk,
                       source=source, extra=extra)
    return path


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    G, D = _nets()
    return _write(tmp_path_factory.mktemp("pkl") / "network-snapshot-000100.pkl", G, D), G, D


def test_a_snapshot_round_trips_to_the_same_images_and_logits(snapshot):
    path, G, D = snapshot
    p = pretrained.load(path)
    m = p.cfg_model
    assert (m.name, m.latent_dim, m.w_dim, m.resolution, m.channel_base, m.channel_max, m.mapping_layers,
            m.conv_clamp, m.mbstd_group, m.conditional) == ("stylegan2", Z, W, RES, 256, 32, 2, 256, 4, True)
    assert p.data_shape == (3, RES, RES) and p.num_classes == CLASSES
    assert p.info["training_set_kwargs"]["path"] == "/data/train.zip"
    G2, D2 = build_models(m, p.data_shape, p.num_classes)
    G2.load_state_dict(p.G_ema_state)
    D2.load_state_dict(p.D_state)
    z, y = torch.randn(4, Z), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        assert torch.equal(G(z, y), G2.eval()(z, y))
        assert torch.equal(G(z, y, truncation_psi=0.7), G2(z, y, truncation_psi=0.7))
        x = G(z, y)
        assert torch.equal(D(x, y), D2.eval()(x, y))
    # the reader imported none of NVIDIA's modules (the writer's stand-ins are gone)
    assert not any(name.split(".")[0] in ("torch_utils", "dnnlib") for name in sys.modules)


def test_load_generator_and_nvidias_seeds(snapshot, tmp_path, capsys):
    from distgan.commands import sample

    path, G, _ = snapshot
    G2, cfg, state = load_generator(str(path))
    assert cfg.model.name == "stylegan2" and state.used_ema and state.step == 0
    out = tmp_path / "faces"
    sample.main([f"checkpoint={path}", "seeds=0-2,5", "label=1", "truncation=0.5", f"out={out}/"])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["seed0000.png", "seed0001.png", "seed0002.png", "seed0005.png"]
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(Z) for s in (0, 1, 2, 5)])).float()
    with torch.no_grad():
        want = G(z, torch.ones(4, dtype=torch.long), truncation_psi=0.5)
    want = (want.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
    import PIL.Image

    for i, name in enumerate(names):
        assert np.array_equal(np.asarray(PIL.Image.open(out / name)), want[i]), name
    # the grid and raw outputs of the same seeds; noise modes
    sample.main([f"checkpoint={path}", "seeds=0-3", "noise_mode=none", f"out={tmp_path / 'x.npy'}"])
    none = np.load(tmp_path / "x.npy")
    sample.main([f"checkpoint={path}", "seeds=0-3", "noise_mode=random", f"out={tmp_path / 'y.npy'}"])
    assert none.shape == (4, 3, RES, RES) and not np.allclose(none, np.load(tmp_path / "y.npy"))
    sample.main([f"checkpoint={path}", "seeds=0-3", f"out={tmp_path / 'g.png'}"])
    assert (tmp_path / "g.png").stat().st_size > 0
    assert "seeds 0-3 from the pickle" in capsys.readouterr().out


def _marker_payload(marker: Path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return Evil()


def test_a_payload_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "evil.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"G_ema": _marker_payload(marker)}, f)
    with pytest.raises(UserError, match=r"refused (posix|nt|os)\.system") as e:
        pretrained.load(bad)
    assert "\n" not in str(e.value) and not marker.exists()
    for name, payload in (("eval", (eval, ("1",))), ("exec", (exec, ("x=1",))), ("getattr", (getattr, ("s", "upper")))):
        class R:
            def __reduce__(self, payload=payload):
                return payload
        with open(bad, "wb") as f:
            pickle.dump([R()], f)
        with pytest.raises(UserError, match=f"refused builtins.{name}"):
            pretrained.load(bad)
    # a storage whose bytes are a torch.save of a payload: torch.load(weights_only=True) refuses it
    import io

    buf = io.BytesIO()
    torch.save(_marker_payload(marker), buf)

    class Storage:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (buf.getvalue(),))
    with open(bad, "wb") as f:
        pickle.dump(Storage(), f)
    with pytest.raises(UserError, match="unreadable"):
        pretrained.load(bad)
    assert not marker.exists()


def test_a_persistent_record_whose_source_would_run_code_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    src = f"import os\nos.system('touch {marker}')\n" + nvp.SOURCE
    G, D = _nets()
    path = _write(tmp_path / "evil.pkl", G, D, source=src, gk={"z_dim": Z})
    with pytest.raises(UserError, match="lack c_dim"):
        pretrained.load(path)
    assert not marker.exists()
    # the source of a well-formed snapshot is only hashed, never run: it loads, and nothing ran
    assert pretrained.load(_write(tmp_path / "evil2.pkl", G, D, source=src)).num_classes == CLASSES
    assert not marker.exists()
    path = _write(tmp_path / "evil3.pkl", G, D, source=f"import os\nos.system('touch {marker}')\n")
    with pytest.raises(UserError, match="not defined in the source it carries"):
        pretrained.load(path)
    assert not marker.exists()
    # a class name no StyleGAN2 network has is refused when the record is met
    with nvp.stand_in_modules():
        rec = nvp.Persistent({"type": "class", "version": 6, "class_name": "Backdoor", "module_src": src,
                              "state": nvp.module_state({}, {})})
        with open(path, "wb") as f:
            pickle.dump({"G_ema": rec}, f)
    with pytest.raises(UserError, match="refused persistent class 'Backdoor'"):
        pretrained.load(path)
    assert not marker.exists()


def _one_line(path) -> str:
    with pytest.raises(UserError) as e:
        pretrained.load(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_what_distgan_cannot_build_is_one_line_naming_it(tmp_path):
    G, D = _nets()
    assert "StyleGAN3-T generator" in _one_line(_write(tmp_path / "t.pkl", G, D, source=nvp.STYLEGAN3_SOURCE))
    gk = nvp.g_kwargs(Z, W, RES, 3, CLASSES, 2, 256, 32, 256)
    gk["synthesis_kwargs"]["architecture"] = "orig"
    assert "architecture='orig'" in _one_line(_write(tmp_path / "o.pkl", G, D, gk=gk))
    dk = nvp.d_kwargs(RES, 3, CLASSES, 256, 32, 256, 4)
    dk["architecture"] = "skip"
    assert "D architecture='skip'" in _one_line(_write(tmp_path / "s.pkl", G, D, dk=dk))
    gk = nvp.g_kwargs(Z, W, RES, 3, CLASSES, 2, 256, 32, 256)
    gk["synthesis_kwargs"]["magnitude_ema_beta"] = 0.9
    assert "magnitude_ema_beta" in _one_line(_write(tmp_path / "u.pkl", G, D, gk=gk))
    tf = tmp_path / "tf.pkl"
    tf.write_bytes(b"\x80\x02cdnnlib.tflib.network\nNetwork\nq\x00)\x81q\x01.")
    assert "TF-era" in _one_line(tf) and "legacy.py" in _one_line(tf)
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    assert "unreadable" in _one_line(tmp_path / "junk.pkl")
    assert "does not exist" in _one_line(tmp_path / "none.pkl")
    with open(tmp_path / "dict.pkl", "wb") as f:
        pickle.dump({"weights": OrderedDict()}, f)
    assert "no StyleGAN2-ADA/StyleGAN3 G or G_ema" in _one_line(tmp_path / "dict.pkl")


def test_export_writes_nvidias_names_and_kwargs(snapshot, tmp_path, capsys):
    from distgan.commands import export

    path, G, _ = snapshot
    out = tmp_path / "G.pt"
    export.main([f"checkpoint={path}", f"out={out}"])
    d = torch.load(out, weights_only=True)
    kw = d["init_kwargs"]
    assert (kw["z_dim"], kw["c_dim"], kw["w_dim"], kw["img_resolution"], kw["img_channels"]) == (Z, CLASSES, W, RES, 3)
    assert kw["mapping_kwargs"] == {"num_layers": 2}
    assert kw["synthesis_kwargs"]["conv_clamp"] == 256 and kw["synthesis_kwargs"]["num_fp16_res"] == 0
    sd = d["state_dict"]
    assert {"mapping.fc0.weight", "mapping.embed.weight", "mapping.w_avg", "synthesis.b4.const",
            "synthesis.b4.resample_filter", "synthesis.b32.conv0.noise_const", "synthesis.b32.conv0.resample_filter",
            "synthesis.b32.torgb.affine.weight"} <= sd.keys()
    assert sd["synthesis.b32.conv0.noise_const"].shape == (RES, RES)
    back = from_nvidia(sd, "G", RES)
    assert back.keys() == G.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in G.state_dict().items())
    D_sd = _nets()[1].state_dict()
    assert {k: v.shape for k, v in from_nvidia(to_nvidia(D_sd, "D", RES), "D", RES).items()} == \
        {k: v.shape for k, v in D_sd.items()}
    assert "G_ema of" in capsys.readouterr().out


def test_d_label_mapping_has_eight_layers_whatever_g_has():
    from distgan.config import ModelConfig

    cfg = ModelConfig(name="stylegan2", latent_dim=16, w_dim=16, channel_base=256, channel_max=32, mapping_layers=2,
                      norm_g="none", norm_d="none", conditional=True)
    G, D = build_models(cfg, (3, 32, 32), 10)
    assert len(G.mapping.layers) == 2 and len(D.mapping.layers) == 8


def test_minibatch_std_strides_its_groups_like_nvidia():
    torch.manual_seed(0)
    x = torch.randn(8, 6, 4, 4)

    def nvidia(x, G):  # StyleGAN2-ADA's MinibatchStdLayer, F = 1, written out
        N, C, H, W = x.shape
        y = x.reshape(G, -1, 1, C, H, W)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4]).reshape(-1, 1, 1, 1).repeat(G, 1, H, W)
        return torch.cat([x, y], dim=1)

    assert torch.allclose(MinibatchStd(4, span=8)(x), nvidia(x, 4), atol=1e-6)
    # within each run of `span` samples: a micro-batch of 8 with span 4 = two of NVIDIA's per-GPU batches
    assert torch.allclose(MinibatchStd(4, span=4)(x), torch.cat([nvidia(x[:4], 4), nvidia(x[4:], 4)]), atol=1e-6)
    assert torch.equal(MinibatchStd(4)(x), MinibatchStd(4, span=4)(x))  # default: contiguous groups of 4
    assert not torch.allclose(MinibatchStd(4, span=8)(x), MinibatchStd(4)(x))
    with pytest.raises(ValueError, match="span 8"):
        MinibatchStd(4, span=8)(x[:4])


def test_noise_maps_are_saved_and_older_checkpoints_keep_theirs():
    G = StyleGAN2Generator(32, 3, 256, 32, 2, z_dim=16, w_dim=16)
    sd = G.state_dict()
    keys = [k for k in sd if k.endswith("noise_const")]
    assert len(keys) == len(G.noise_resolutions)
    layer = G.synthesis.blocks[1].conv0
    assert torch.equal(layer.noise_const, seeded_noise(8, layer.noise_seed))
    old = {k: v for k, v in sd.items() if not k.endswith("noise_const")}  # a checkpoint from before issue 21
    G2 = StyleGAN2Generator(32, 3, 256, 32, 2, z_dim=16, w_dim=16)
    with torch.no_grad():
        for k in keys:
            G2.state_dict()[k].zero_()
    G2.load_state_dict(old)  # strict: the seeded maps are filled in
    assert all(torch.equal(G2.state_dict()[k], sd[k]) for k in keys)


def test_conv_clamp_clamps_like_nvidia():
    torch.manual_seed(0)
    conv = EqualConv2d(4, 4, 3, gain=0.5, conv_clamp=0.1)
    y = conv(torch.randn(2, 4, 8, 8) * 10)
    assert y.abs().max() <= 0.05 + 1e-7 and (y.abs() == 0.05).any()  # +-clamp * gain
    skip = EqualConv2d(4, 4, 1, bias=False, activation=False, down=True, gain=0.5)
    assert skip.conv_clamp is None
    G = StyleGAN2Generator(32, 3, 256, 32, 2, z_dim=16, w_dim=16, conv_clamp=1e-3)
    with torch.no_grad():
        img = G(torch.randn(2, 16))
    assert img.abs().max() <= 5 * 1e-3  # sum of toRGBs clamped to +-1e-3 each (4 of them, upsampled)


@pytest.mark.parametrize("args, message", [
    (["seeds=a-b", "out={T}/d/"], "not a seed or a range"),
    (["seeds=5-1", "out={T}/d/"], "runs backwards"),
    (["seeds=0-3", "out={T}/x.jpg"], "or a folder DIR/"),
    (["noise_mode=fancy", "out={T}/x.png"], "noise_mode=fancy"),
])
def test_bad_sample_arguments_are_one_line(snapshot, tmp_path, args, message):
    from distgan.commands import sample

    with pytest.raises(UserError, match=message):
        sample.main([f"checkpoint={snapshot[0]}", *[a.format(T=tmp_path) for a in args]])


def test_bad_export_arguments_are_one_line(snapshot, tmp_path):
    from distgan.commands import export

    with pytest.raises(UserError, match="use a .pt file name"):
        export.main([f"checkpoint={snapshot[0]}", f"out={tmp_path}/G.pkl"])


def test_pretrained_keeps_to_its_layer():
    """distgan/pretrained imports config, errors, files, models, checkpoint, state — never the launcher,
    commands, train, cli or metrics."""
    forbidden = ("distgan.launcher", "distgan.commands", "distgan.train", "distgan.cli", "distgan.metrics")
    for path in (ROOT / "distgan" / "pretrained").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"


def test_a_checkpoint_from_before_the_saved_noise_maps_still_samples(tmp_path):
    """A distgan checkpoint written before noise_const was a saved buffer: load_generator fills the maps by
    the seeded rule it used, so its images do not change; fill_noise_const passes the exact key check."""
    from distgan import checkpoint
    from distgan.config import Config, ModelConfig, to_dict
    from distgan.models.stylegan2 import fill_noise_const

    cfg = Config(model=ModelConfig(name="stylegan2", latent_dim=16, w_dim=16, channel_base=256, channel_max=32,
                                   mapping_layers=2, norm_g="none", norm_d="none"))
    torch.manual_seed(0)
    G, D = build_models(cfg.model, (3, 32, 32))
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, SynthesisLayer):
                m.noise_strength.fill_(0.4)
    old_G = {k: v for k, v in G.state_dict().items() if not k.endswith("noise_const")}
    checkpoint.save(tmp_path / "checkpoints", 10, {"G": old_G, "D": D.state_dict(), "G_ema": old_G, "step": 10,
                                                   "config": to_dict(cfg), "data_shape": [3, 32, 32]})
    G2, _, state = load_generator(str(tmp_path))
    z = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(G2(z), G.eval()(z)) and state.step == 10
    checkpoint.check_architecture(G, fill_noise_const(G, old_G), "generator", "old")
    with pytest.raises(UserError, match="different generator architecture"):
        checkpoint.check_architecture(G, old_G, "generator", "old")
