"""tune=asha|pbt|grid|random (distgan/launcher/tune.py, tune_plan.py, docs/tune.md): the README's command line composes;
bad input is one line before anything starts; a 4-trial ASHA search stops a trial early and writes its
results, and a finished trial equals its config run alone; PBT hands a trial another's checkpoint and it
continues from it with the perturbed value; the same command again resumes the search, also after a Ctrl-C
mid-way (every trial from its own checkpoint). The searches run model=mlp on the 2D grid, one CPU worker per trial."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_PARAMS = "tune.params={train.r1_gamma: loguniform(0.01,10), train.lr_d: choice(1e-4,2e-4,4e-4)}"
TINY = ["model=mlp", "dataset=grid", "model.width=4", "model.latent_dim=2", "train.batch_size=64",
        "train.steps=60", "train.log_every=10", "train.sample_every=60", "train.eval_every=0"]


def cli_env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("DISTGAN_DEBUG", None)
    return env


def run_cli(*overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch" / "run.py"), *overrides], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def rows(path: Path, offset: int = 0) -> list[dict]:
    with open(path, "rb") as f:
        f.seek(offset)
        return [json.loads(line) for line in f.read().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------- no Ray needed
def test_readme_command_composes(tmp_path):
    """The README's exact syntax: Hydra would call choice() and know no loguniform(); quoted for it."""
    from ray import tune

    from distgan.compose import load_config, quote_search_spaces
    from distgan.config import validate
    from distgan.launcher.tune_plan import search_space

    argv = quote_search_spaces(["tune=asha", README_PARAMS, "tune.num_trials=16"])
    cfg = validate(load_config(argv, tmp_path / "sweep"), 2)
    assert cfg.tune.name == "asha" and cfg.tune.num_trials == 16 and cfg.train.eval_every == 2000
    assert cfg.tune.params == {"train.r1_gamma": "loguniform(0.01,10)", "train.lr_d": "choice(1e-4,2e-4,4e-4)"}
    space = search_space(cfg.tune)
    assert isinstance(space["train.r1_gamma"], tune.search.sample.Float)
    assert space["train.lr_d"].categories == [1e-4, 2e-4, 4e-4]
    assert load_config([], tmp_path / "run").tune.name == "none"  # the default: one run


def test_each_search_builds_its_scheduler(tmp_path):
    """grid/random/asha/pbt as Ray Tune's own objects (no Ray cluster needed to build them)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    from distgan.compose import load_config, quote_search_spaces
    from distgan.launcher.tune_plan import max_kimg, scheduler, search_space, trial_config

    def cfg(*argv):
        return load_config(quote_search_spaces([*TINY, "train.eval_every=20", *argv]), tmp_path / "s")

    grid = cfg("tune=grid", "tune.params={train.lr_d: grid(1e-4,2e-4), loss.name: grid(bce,hinge)}")
    assert search_space(grid.tune) == {"train.lr_d": {"grid_search": [1e-4, 2e-4]},
                                       "loss.name": {"grid_search": ["bce", "hinge"]}}
    assert isinstance(scheduler(grid, "min"), FIFOScheduler)
    asha = cfg("tune=asha", "tune.params={train.lr_d: uniform(1e-4,2e-4)}", "tune.reduction_factor=2")
    a = scheduler(asha, "min")
    assert isinstance(a, ASHAScheduler) and a._time_attr == "kimg" and max_kimg(asha) == 3.84
    assert [m for m, _ in a._brackets[0]._rungs][::-1][:2] == [1.28, 2.56]  # the first evaluation, then x2
    pbt = cfg("tune=pbt", "tune.params={train.lr_d: loguniform(1e-4,1e-3), train.r1_gamma: choice(0.1,1)}",
              "tune.perturb=[train.lr_d]")
    p = scheduler(pbt, "min")
    assert isinstance(p, PopulationBasedTraining) and list(p._hyperparam_mutations) == ["train.lr_d"]
    # a trial: the values typed by their keys, one worker, no search, checkpoints at every report for PBT
    trial = trial_config(pbt, {"train.lr_d": 3e-4, "train.r1_gamma": 1, "train.r1_interval": 19.2}, tmp_path / "t")
    assert (trial.train.lr_d, trial.train.r1_gamma, trial.train.r1_interval) == (3e-4, 1.0, 19)
    assert trial.cluster.num_workers == 1 and trial.tune.name == "none" and trial.train.checkpoint_every == 20
    assert trial.run_dir == str((tmp_path / "t").resolve())


BAD = [
    ("unknown-key", ["tune=asha", "tune.params={train.lr_x: choice(1e-4,2e-4)}"], "unknown key 'train.lr_x'"),
    ("not-a-space", ["tune=asha", "tune.params={train.lr_d: uniform(1e-4)}"], "uniform() takes two numbers"),
    ("wrong-type", ["tune=asha", "tune.params={train.steps: choice(10,ten)}"], "train.steps='ten' does not fit"),
    ("fid-without-inception", ["tune=asha", "tune.params={train.lr_d: choice(1e-4,2e-4)}", "tune.metric=fid"],
     "set metrics.features=inception"),
    ("metric-without-evaluations", ["tune=asha", "tune.params={train.lr_d: choice(1e-4,2e-4)}",
                                    "train.eval_every=0"], "no trial evaluates (train.eval_every=0)"),
    ("metric-nobody-logs", ["tune=asha", "tune.params={train.lr_d: choice(1e-4,2e-4)}", "tune.metric=loss/Q"],
     "unknown tune.metric 'loss/Q'"),
    ("pbt-over-the-model", ["tune=pbt", "tune.params={model.width: choice(8,16)}"], "cannot perturb model.width"),
    ("pbt-over-the-resolution", ["tune=pbt", "tune.params={dataset.resolution: choice(28,32)}"],
     "cannot perturb dataset.resolution"),
    ("trial-gpus", ["tune=asha", "tune.params={train.lr_d: choice(1e-4,2e-4)}", "tune.trial_gpus=99"],
     "tune.trial_gpus=99 is more than a node has"),
]


@pytest.mark.parametrize("argv,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_line(argv, message, tmp_path, capsys):
    """Through the command line's own check (compose + pre-flight), as launch/run.py runs it: one
    ``error:`` line, exit 2, nothing created — in-process, so no interpreter or Ray start per case."""
    from distgan.compose import quote_search_spaces
    from distgan.launcher.command_line import check_command_line

    run_dir = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_:
        check_command_line(quote_search_spaces([*argv, f"hydra.run.dir={run_dir}"]))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not run_dir.exists()


def test_bad_input_through_the_cli(tmp_path):
    """The same through launch/run.py itself (the README's dict syntax with a mistyped key)."""
    proc = run_cli("tune=asha", "tune.params={train.r1_gama: loguniform(0.01,10)}", f"hydra.run.dir={tmp_path}/s",
                   timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: tune.params: unknown key 'train.r1_gama'"), lines[0]
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------- searches (each 60-70 s on 2 busy cores: slow)
@pytest.mark.slow
def test_asha_stops_a_trial_early_and_writes_results(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sweep = tmp_path / "sweep"
    proc = run_cli(*TINY, f"hydra.run.dir={sweep}", "tune=asha", "tune.num_trials=4", "tune.metric=loss/D",
                   "tune.reduction_factor=2", "tune.params={train.lr_d: loguniform(1e-5,5e-2)}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "search: tune=asha, 4 trial(s) of {train.lr_d: loguniform(1e-5,5e-2)}, loss/D (min)" in proc.stdout
    with open(sweep / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4
    assert all(r["status"] in ("finished", "stopped early") for r in table), table
    stopped = [r for r in table if r["status"] == "stopped early"]
    assert stopped and any(r["status"] == "finished" for r in table), table
    assert all(float(r["kimg"]) < 3.84 for r in stopped)
    for r in table:
        assert Path(r["run_dir"]).parent == sweep / "trials" and (Path(r["run_dir"]) / "checkpoints").is_dir()
    md = (sweep / "results.md").read_text()
    assert "| trial | train.lr_d | loss/D | best loss/D | kimg | step | status |" in md and "stopped early" in md
    # the best trial, with the command that samples it
    best = min((r for r in table if r["loss/D"]), key=lambda r: float(r["loss/D"]))
    assert f"run directory : {best['run_dir']}" in proc.stdout
    assert f"python launch/sample.py checkpoint={best['run_dir']}/checkpoints/latest" in proc.stdout
    # TensorBoard HParams: one run per trial with its parameter and metric
    runs = sorted(p.name for p in (sweep / "tb" / "hparams").iterdir() if p.is_dir())
    assert runs == sorted(r["trial"] for r in table)
    acc = EventAccumulator(str(sweep / "tb" / "hparams" / runs[0]), size_guidance={"scalars": 0})
    acc.Reload()
    assert "hparam/loss/D" in acc.Tags()["scalars"]
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")

    # exactness kept: a finished trial is the run its config gives alone, bit for bit
    import torch

    done = next(r for r in table if r["status"] == "finished")
    lr = json.loads((Path(done["run_dir"]) / "tune.json").read_text())["params"]["train.lr_d"]
    alone = run_cli(*TINY, f"hydra.run.dir={tmp_path / 'alone'}", f"train.lr_d={lr!r}", "cluster.num_workers=1")
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    a, b = (torch.load(d / "checkpoints" / "latest" / "state.pt", weights_only=True)
            for d in (Path(done["run_dir"]), tmp_path / "alone"))
    assert a["step"] == b["step"] == 60
    for net in ("G", "D", "G_ema"):
        assert a[net].keys() == b[net].keys() and all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net


@pytest.mark.slow
def test_pbt_exploits_then_the_same_command_resumes(tmp_path):
    import torch

    sweep = tmp_path / "sweep"
    args = [*TINY, f"hydra.run.dir={sweep}", "tune=pbt", "tune.num_trials=2", "tune.metric=loss/D",
            "tune.params={train.lr_d: loguniform(1e-5,5e-2)}"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = {p.parent.name: json.loads(p.read_text()) for p in (sweep / "trials").glob("*/tune.json")}
    assert len(records) == 2
    exploited = {trial: r for trial, r in records.items() if r["exploited"]}
    assert exploited, records
    trial, record = next(iter(exploited.items()))
    ex = record["exploited"][0]
    assert ex["from"] in records and ex["from"] != trial
    assert ex["params"]["train.lr_d"] != record["initial"]["train.lr_d"]  # perturbed (or resampled)
    # the copied checkpoint is where the trial went on: its next log tick is the one after the copied step
    run_dir = sweep / "trials" / trial
    after = rows(run_dir / "metrics.jsonl", ex["metrics_offset"])
    assert after[0]["step"] == ex["step"] + 10, after[:2]
    # with the perturbed value: in the trial's config, its checkpoints and D's optimizer
    state = torch.load(run_dir / "checkpoints" / "latest" / "state.pt", weights_only=True)
    lr = record["params"]["train.lr_d"]
    assert state["config"]["train"]["lr_d"] == pytest.approx(lr)
    assert state["opt_D"]["param_groups"][0]["lr"] == pytest.approx(lr)
    status = {r["trial"]: r["status"] for r in csv.DictReader(open(sweep / "results.csv"))}
    assert f"exploited-from {ex['from']} at step {ex['step']}" in status[trial]

    again = run_cli(*args)  # the same command: Tuner.restore, nothing left to train
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming the search in {sweep / 'tune'}" in again.stdout
    assert "started" not in again.stdout
    assert {r["trial"]: r["status"] for r in csv.DictReader(open(sweep / "results.csv"))} == status


@pytest.mark.slow
def test_a_search_stopped_midway_resumes_every_trial_from_its_checkpoint(tmp_path):
    """Ctrl-C (SIGINT) to the driver while both trials train, then the same command: the search is restored
    and each trial continues from its own newest checkpoint (its first log tick is never logged twice)."""
    import signal
    import time

    sweep = tmp_path / "sweep"
    args = [*TINY, f"hydra.run.dir={sweep}", "train.steps=20000", "train.log_every=100", "train.checkpoint_every=200",
            "train.sample_every=20000", "tune=random", "tune.num_trials=2", "tune.metric=loss/D",
            "tune.params={train.lr_d: loguniform(1e-4,1e-3)}"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch" / "run.py"), *args], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        ckpts = [sorted((d / "checkpoints").glob("step_*")) for d in (sweep / "trials").glob("*")
                 if (d / "checkpoints").is_dir()]
        if len(ckpts) == 2 and all(ckpts):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the search ended before both trials had a checkpoint: " + proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGINT)
    first, _ = proc.communicate(timeout=180)
    before = {d.name: rows(d / "metrics.jsonl") for d in (sweep / "trials").glob("*")}
    assert len(before) == 2 and all(r and r[-1]["step"] < 20000 for r in before.values()), first[-3000:]

    again = run_cli(*args, timeout=600)  # the same command
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming the search in {sweep / 'tune'}" in again.stdout
    with open(sweep / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and all(r["status"] == "finished" for r in table), table
    for trial, old in before.items():
        steps = [r["step"] for r in rows(sweep / "trials" / trial / "metrics.jsonl")]
        assert steps.count(100) == 1, (trial, steps[:5])  # never restarted from zero
        assert steps[-1] == 20000 and len(steps) > len(old)


@pytest.mark.slow
@pytest.mark.slurm
def test_search_in_one_slurm_allocation(tmp_path):
    """cluster=slurm tune=asha: one job, one Ray cluster over its nodes; task 0 runs the search and the
    trials run on the job's nodes (the local SLURM test cluster, slurm/local_cluster_up.sh)."""
    from tests.test_slurm import _cluster_up, assert_job_gone, job_ids

    if not os.environ.get("CI") and not _cluster_up():
        pytest.skip("local SLURM test cluster is not up (run slurm/local_cluster_up.sh as root)")
    sweep = tmp_path / "sweep"
    proc = run_cli(*TINY, f"hydra.run.dir={sweep}", "cluster=slurm", "cluster.nodes=2", "cluster.cpus_per_task=1",
                   "cluster.wait=true", "tune=asha", "tune.num_trials=2", "tune.metric=loss/D",
                   "tune.params={train.lr_d: choice(1e-4,1e-2)}", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (job,) = job_ids(proc.stdout)
    with open(sweep / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and all(r["status"] in ("finished", "stopped early") for r in table), table
    nodes = {json.loads((Path(r["run_dir"]) / "workers" / "rank0.json").read_text())["slurm_node"] for r in table}
    assert nodes <= {"n1", "n2"} and nodes, nodes
    log = (sweep / "slurm" / f"{job}_0_log.out").read_text()
    assert "best trial    :" in log and "python launch/sample.py checkpoint=" in log
    assert_job_gone(job)
