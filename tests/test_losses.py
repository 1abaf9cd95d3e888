"""Unit tests of the GAN algorithms: losses, penalties, EMA, optimizers, models, mixed precision."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distgan.config import Config, LossConfig, ModelConfig, TrainConfig
from distgan.ema import EmaPairs, ema_beta
from distgan.errors import UserError
from distgan.launcher.preflight import check_config
from distgan.losses import build_loss
from distgan.models import build_models
from distgan.optim import build_optimizers
from distgan.regularizers import input_gradient_sq
from distgan.samples import class_rows
from distgan.step import GANStep, StepContext, Trainable

REAL = [2.0, -1.0, 0.3]
FAKE = [0.5, -3.0, 1.2]


def _mean(values):
    return sum(values) / len(values)


def _softplus(x):
    return math.log1p(math.exp(x))


# expected (D loss, G loss) written from each paper's formula, in plain Python
FORMULAS = {
    "bce": (_mean([_softplus(-r) for r in REAL]) + _mean([_softplus(f) for f in FAKE]),
            _mean([_softplus(-f) for f in FAKE])),
    "hinge": (_mean([max(0.0, 1 - r) for r in REAL]) + _mean([max(0.0, 1 + f) for f in FAKE]),
              -_mean(FAKE)),
    "lsgan": (0.5 * _mean([(r - 1) ** 2 for r in REAL]) + 0.5 * _mean([f**2 for f in FAKE]),
              0.5 * _mean([(f - 1) ** 2 for f in FAKE])),
    "wgan_gp": (_mean(FAKE) - _mean(REAL), -_mean(FAKE)),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_loss_matches_formula(name):
    loss = build_loss(LossConfig(name=name))
    real, fake = torch.tensor(REAL, dtype=torch.float64), torch.tensor(FAKE, dtype=torch.float64)
    want_d, want_g = FORMULAS[name]
    assert loss.d_loss(real, fake).item() == pytest.approx(want_d, rel=1e-12)
    assert loss.g_loss(fake).item() == pytest.approx(want_g, rel=1e-12)


def test_bce_is_stable_for_large_logits():
    loss = build_loss(LossConfig(name="bce"))
    big = torch.tensor([200.0, -200.0])
    assert torch.isfinite(loss.d_loss(big, -big)) and torch.isfinite(loss.g_loss(-big))


# --------------------------------------------------------------------------- penalties in float64
class SmoothD(nn.Module):
    """A smooth D (tanh) so central finite differences are accurate."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


def _fd_input_grad(D, x, eps=1e-6):
    grad = torch.zeros_like(x)
    for i in range(x.shape[1]):
        step = torch.zeros_like(x)
        step[:, i] = eps
        grad[:, i] = (D(x + step) - D(x - step)) / (2 * eps)
    return grad


def _fd_param_grad(penalty_fn, param, eps=1e-6, entries=4):
    flat = param.data.view(-1)
    out = []
    for i in range(entries):
        old = flat[i].item()
        flat[i] = old + eps
        plus = penalty_fn().item()
        flat[i] = old - eps
        minus = penalty_fn().item()
        flat[i] = old
        out.append((plus - minus) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


def _gan_step(D, loss="wgan_gp", **train):
    G = nn.Identity()
    t = TrainConfig(r1_gamma=train.pop("r1_gamma", 0.0), **train)
    opt = torch.optim.SGD(D.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return GANStep(Trainable(G, opt), Trainable(D, opt), build_loss(LossConfig(name=loss)), t,
                   StepContext(torch.device("cpu"), scaler, 3))


def test_r1_matches_finite_differences():
    torch.manual_seed(0)
    D = SmoothD().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    got = input_gradient_sq(D(xg), xg, torch.amp.GradScaler("cpu", enabled=False))
    want = _fd_input_grad(D, x).pow(2).sum(1)
    torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-6)

    # the double backward: d(R1)/d(params) against finite differences of the penalty
    def penalty():
        xr = x.clone().requires_grad_(True)
        return input_gradient_sq(D(xr), xr, torch.amp.GradScaler("cpu", enabled=False)).mean()

    weight = D.net[0].weight
    (auto,) = torch.autograd.grad(penalty(), weight)
    torch.testing.assert_close(auto.view(-1)[:4], _fd_param_grad(penalty, weight), atol=1e-7, rtol=1e-5)


def test_gradient_penalty_matches_finite_differences():
    torch.manual_seed(1)
    D = SmoothD().double()
    gan = _gan_step(D)
    real, fake = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    alpha = torch.rand(4, 1, dtype=torch.float64)
    x_hat = alpha * real + (1 - alpha) * fake
    want = (_fd_input_grad(D, x_hat).norm(dim=1) - 1).pow(2).mean()
    got = gan._gradient_penalty(real, fake, alpha, None)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    weight = D.net[2].weight
    (auto,) = torch.autograd.grad(gan._gradient_penalty(real, fake, alpha, None), weight)
    fd = _fd_param_grad(lambda: gan._gradient_penalty(real, fake, alpha, None), weight)
    torch.testing.assert_close(auto.view(-1)[:4], fd, atol=1e-7, rtol=1e-5)


def test_penalty_is_unchanged_by_fp16_loss_scaling():
    """GradScaler multiplies D's output before autograd.grad; the penalty must unscale it again."""
    torch.manual_seed(2)
    D = SmoothD()
    x = torch.randn(6, 3, requires_grad=True)
    plain = input_gradient_sq(D(x), x, torch.amp.GradScaler("cpu", enabled=False))
    scaled = input_gradient_sq(D(x), x, torch.amp.GradScaler("cpu", init_scale=2.0**14, enabled=True))
    torch.testing.assert_close(scaled, plain, rtol=1e-6, atol=1e-8)


def test_lazy_r1_scales_the_penalty_by_its_interval():
    torch.manual_seed(3)
    D = SmoothD()
    gan = _gan_step(D, loss="bce", r1_gamma=4.0, r1_interval=8)
    x = torch.randn(5, 3)
    penalty = gan.d_r1(x, None)
    xg = x.clone().requires_grad_(True)
    want = (4.0 / 2) * torch.autograd.grad(D(xg).sum(), xg)[0].pow(2).sum(1).mean()
    assert penalty.item() == pytest.approx(want.item(), rel=1e-5)


def test_lazy_r1_adam_correction():
    G, D = nn.Linear(2, 2), nn.Linear(2, 1)
    t = TrainConfig(lr_g=1e-3, lr_d=2e-3, beta1=0.0, beta2=0.99, r1_gamma=1.0, r1_interval=16)
    opt_g, opt_d = build_optimizers(G, D, t)
    c = 16 / 17
    assert opt_g.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert opt_d.param_groups[0]["lr"] == pytest.approx(2e-3 * c)
    assert opt_d.param_groups[0]["betas"] == pytest.approx((0.0, 0.99**c))
    _, opt_plain = build_optimizers(G, D, TrainConfig(lr_d=2e-3, r1_gamma=0.0))
    assert opt_plain.param_groups[0]["lr"] == pytest.approx(2e-3)


# --------------------------------------------------------------------------------- lr schedule
def test_lr_decay_follows_its_formula():
    from distgan.optim import build_schedulers, lr_factor

    assert [lr_factor(TrainConfig(steps=10), k) for k in (0, 5, 10)] == [1.0, 1.0, 1.0]
    lin = TrainConfig(steps=10, lr_decay="linear", lr_decay_start=0.5)
    assert [lr_factor(lin, k) for k in (0, 5, 6, 9, 10)] == pytest.approx([1, 1, 0.8, 0.2, 0])
    cos = TrainConfig(steps=100, lr_decay="cosine")
    assert [lr_factor(cos, k) for k in (0, 50, 100)] == pytest.approx([1, 0.5, 0])
    assert lr_factor(cos, 25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    # the optimizers follow it, the lazy-R1 correction of D's rate included, and a scheduler built
    # for a resumed run starts where the first one was
    G, D = nn.Linear(2, 2), nn.Linear(2, 2)
    t = TrainConfig(steps=10, lr_g=1e-3, lr_d=2e-3, lr_decay="linear", r1_gamma=1.0, r1_interval=16)
    opt_g, opt_d = build_optimizers(G, D, t)
    seen = []
    for sched in [build_schedulers(opt_g, opt_d, t)] * 7:
        seen += [opt_g.param_groups[0]["lr"], opt_d.param_groups[0]["lr"]]
        for opt, s in zip((opt_g, opt_d), sched):
            opt.step()
            s.step()
    assert seen == pytest.approx([r * (1 - k / 10) for k in range(7) for r in (1e-3, 2e-3 * 16 / 17)])
    opt_g2, opt_d2 = build_optimizers(G, D, t)
    opt_g2.load_state_dict(opt_g.state_dict())
    build_schedulers(opt_g2, opt_d2, t, first_step=7)
    assert opt_g2.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.3)


# ------------------------------------------------------------------------------------------ EMA
def test_ema_beta_is_a_half_life_in_images_with_ramp_up():
    cfg = Config()
    cfg.train.ema_kimg = 10.0
    batch = 64
    late = ema_beta(cfg, batch, images_seen=10**7)  # far past the ramp-up
    assert late ** (10_000 / batch) == pytest.approx(0.5)  # old weights halve every 10k images
    early = ema_beta(cfg, batch, images_seen=2_000)  # ramp-up: half-life 5 % of the images seen = 100
    assert early ** (100 / batch) == pytest.approx(0.5)
    assert early < late
    # the same images seen with a doubled batch: the same decay per image (world-size invariance)
    assert ema_beta(cfg, 2 * batch, 10**7) == pytest.approx(late**2)


def test_ema_update_follows_its_formula():
    torch.manual_seed(4)
    G, G_ema = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    G(torch.randn(8, 3))  # move G's running stats
    before = [p.detach().clone() for p in G_ema.parameters()]
    EmaPairs(G_ema, G).update(0.9)
    for old, p, p_ema in zip(before, G.parameters(), G_ema.parameters()):
        torch.testing.assert_close(p_ema, 0.9 * old + 0.1 * p.detach())
    torch.testing.assert_close(G_ema[1].running_mean, G[1].running_mean)  # buffers are copied


# --------------------------------------------------------------------------------------- models
def test_mlp_generator_activation():
    def activations(net):
        return {type(m).__name__ for m in net.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))}

    G, D = build_models(ModelConfig(name="mlp", width=2, latent_dim=2), (2,))
    assert activations(G) == activations(D) == {"LeakyReLU"}  # the blog post's MLP
    G_relu, D = build_models(ModelConfig(name="mlp", width=2, latent_dim=2, activation_g="relu"), (2,))
    assert activations(G_relu) == {"ReLU"} and activations(D) == {"LeakyReLU"}  # D keeps LeakyReLU
    G_relu.load_state_dict(G.state_dict())  # same parameters: only the nonlinearity differs
    z = -torch.ones(1, 2)
    with torch.no_grad():
        G.net[0].weight.fill_(1.0)
        G.net[0].bias.zero_()
        G_relu.net[0].weight.fill_(1.0)
        G_relu.net[0].bias.zero_()
    # negative pre-activations: ReLU gives exactly 0, LeakyReLU 0.2 x
    assert torch.equal(G_relu.net[:2](z), torch.zeros(1, 8))
    assert torch.allclose(G.net[:2](z), torch.full((1, 8), -0.4))


@pytest.mark.parametrize("name", ["dcgan", "resnet"])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_conv_models_cover_every_image_size(name, size):
    cfg = ModelConfig(name=name, width=4, latent_dim=8, norm_g="batch")
    G, D = build_models(cfg, (3, size, size))
    x = G(torch.randn(2, 8))
    assert x.shape == (2, 3, size, size)
    assert D(x).shape == (2,)


def test_resnet_at_32px_is_sngan_cifar_layout():
    G, D = build_models(ModelConfig(name="resnet", width=8, latent_dim=8), (3, 32, 32))
    assert len(G.blocks) == 3 and G.s0 == 4  # 4 -> 8 -> 16 -> 32
    assert [b.down for b in D.blocks] == [True, True, False, False]  # 32 -> 16 -> 8, two blocks at 8


def test_conditional_samples_follow_the_requested_classes():
    torch.manual_seed(5)
    G, D = build_models(ModelConfig(name="dcgan", width=4, latent_dim=8, conditional=True, norm_g="none"),
                        (1, 28, 28), num_classes=10)
    labels, per_row = class_rows(10, 24)
    assert per_row == 2 and labels.tolist() == [c for c in range(10) for _ in range(2)]
    z = torch.randn(1, 8).expand(len(labels), 8)  # one z: only the class changes
    x = G(z, labels)
    assert x.shape == (20, 1, 28, 28) and D(x, labels).shape == (20,)
    assert not torch.allclose(x[0], x[2])  # class 0 and class 1 from the same z differ
    torch.testing.assert_close(x[0], x[1])  # same class, same z
    # projection D: the class term changes the logit for the same image
    assert not torch.allclose(D(x[:1], torch.tensor([0])), D(x[:1], torch.tensor([1])))


def test_conditional_needs_labels():
    with pytest.raises(UserError, match="labelled dataset"):
        build_models(ModelConfig(name="mlp", width=2, conditional=True), (2,), num_classes=0)
    cfg = Config()
    cfg.dataset.name, cfg.model.name, cfg.model.conditional = "ring", "mlp", True
    with pytest.raises(UserError, match="labelled dataset"):
        check_config(cfg)
    cfg.dataset.name, cfg.model.name = "fashion_mnist", "resnet"
    check_config(cfg)  # resnet is a known model; a labelled dataset is fine


def test_spectral_norm_bounds_every_d_layer():
    torch.manual_seed(6)
    _, D = build_models(ModelConfig(name="resnet", width=4, latent_dim=8, spectral_norm=True,
                                    conditional=True), (1, 28, 28), num_classes=10)
    x = torch.randn(4, 1, 28, 28)
    for _ in range(30):  # power iterations converge while D runs in training mode
        D(x, torch.zeros(4, dtype=torch.long))
    layers = [m for m in D.modules() if hasattr(m, "parametrizations")]
    assert len(layers) == sum(isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)) for m in D.modules())
    for m in layers:
        w = m.weight.detach().flatten(1) if not isinstance(m, nn.Embedding) else m.weight.detach()
        assert torch.linalg.matrix_norm(w, ord=2) == pytest.approx(1.0, abs=0.05)


# ------------------------------------------------------------------------------- mixed precision
def test_bf16_autocast_step_runs_on_cpu():
    torch.manual_seed(7)
    cfg = ModelConfig(name="dcgan", width=4, latent_dim=8, norm_g="none", conditional=True)
    G, D = build_models(cfg, (1, 28, 28), num_classes=10)
    t = TrainConfig(batch_size=4, precision="bf16", r1_gamma=1.0, r1_interval=1)
    opt_g, opt_d = build_optimizers(G, D, t)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    gan = GANStep(Trainable(G, opt_g), Trainable(D, opt_d), build_loss(LossConfig(name="hinge")), t,
                  StepContext(torch.device("cpu"), scaler, 8, num_classes=10))
    seen = []
    D.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    before = [p.detach().clone() for p in D.parameters()]
    real = torch.rand(4, 1, 28, 28) * 2 - 1
    out = gan.train_step(0, lambda counter: (real, torch.arange(4)))
    stats, loss_g = out.d, out.loss_g
    assert torch.bfloat16 in seen  # autocast really ran in bf16
    assert all(torch.isfinite(v) for v in (stats.loss_d, stats.d_real, loss_g))
    assert any(not torch.equal(a, b) for a, b in zip(before, D.parameters()))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_channels_last_compile_on_cuda(precision, tmp_path):
    """On a GPU: autocast, GradScaler (fp16), channels_last and torch.compile through the real loop; R1
    keeps D uncompiled (double backward). Skipped without CUDA."""
    from distgan.data import MemoryDataset
    from distgan.optim import accelerate

    device = torch.device("cuda")
    cfg = Config()
    cfg.model = ModelConfig(name="resnet", width=8, latent_dim=16, conditional=True, spectral_norm=True)
    cfg.train = TrainConfig(batch_size=8, precision=precision, compile=True, r1_gamma=1.0, r1_interval=2)
    G, D = build_models(cfg.model, (1, 28, 28), num_classes=10)
    G, D = G.to(device), D.to(device)
    assert accelerate(G, D, cfg, device, penalty=True)
    opt_g, opt_d = build_optimizers(G, D, cfg.train)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    gan = GANStep(Trainable(G, opt_g), Trainable(D, opt_d), build_loss(LossConfig(name="hinge")), cfg.train,
                  StepContext(device, scaler, 16, 10))
    data = MemoryDataset(torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (64,)), 10)

    def real_batch(counter):
        idx = torch.arange(8) + 8 * counter
        return data.batch(idx, device), data.batch_labels(idx, device)

    for step in range(3):
        out = gan.train_step(step, real_batch)
        stats, loss_g = out.d, out.loss_g
        assert torch.isfinite(stats.loss_d) and torch.isfinite(loss_g)
