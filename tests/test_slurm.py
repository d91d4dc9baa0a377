"""Running under SLURM.

In this process, with a SLURM job's environment faked: the launcher's resources follow the
trainer, and a requeue signal saves, "requeues" and resumes to the same final step.

On a real one-node SLURM cluster with job accounting (.ci/slurm/start.sh), ``launcher=slurm``:
a two-job sweep, one job of it requeued by SLURM's time-limit signal halfway through, and a
sweep whose job dies hard. The cluster is started here when it is not running; these tests
skip only where that is impossible (not root, or no Debian packages).
"""

from __future__ import annotations

import csv
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from maskfm.config import CONFIG_DIR
from maskfm.run_dir import register_resolvers, resolve_sweep_dir
from maskfm.slurm import gpus_per_node, signal_number, tasks_per_node
from maskfm.train import train
from tests.helpers import TINY_MAE, run_train_cli

REPO = Path(__file__).resolve().parent.parent
START_SCRIPT = REPO / ".ci" / "slurm" / "start.sh"
SLURM_CONF = (
    Path(os.environ.get("MASKFM_SLURM_DIR", "/var/lib/maskfm-slurm")) / "etc" / "slurm.conf"
)

STEPS_PER_EPOCH = 8  # 64 pictures / batch 8
EPOCHS = 3
# Tiny MAE on 32 px pictures, one CPU per job (two jobs share the 2-core test machine).
SWEEP = [
    "-m",
    "+experiment=mae",
    *TINY_MAE,
    "data.img_size=32",
    "data.num_train=64",
    "data.num_val=8",
    "data.batch_size=8",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.log_every_n_steps=1",
    "optim.warmup_epochs=0.5",
    "callbacks.progress.force=lines",
    "print_config=false",
    "torch_threads=1",
    "launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
]


# --- without a cluster -------------------------------------------------------------------------


def test_launcher_resources_follow_the_trainer():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra")
    gpu = compose_with_hydra(
        [
            "+experiment=mae",
            "launcher=slurm",
            "trainer=ddp",
            "trainer.devices=8",
            "trainer.num_nodes=2",
            "hydra.launcher.partition=gpu",
        ]
    )
    launcher = gpu.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and gpu.hydra.mode.name == "MULTIRUN"
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (8, 8, 2)
    assert launcher.partition == "gpu" and launcher.name == "train-mae"
    assert dict(launcher.additional_parameters) == {"signal": "USR1@120", "requeue": True}
    assert list(launcher.setup) == ["export SRUN_CPUS_PER_TASK=1"]  # data.num_workers=0 + the rank
    cpu = compose_with_hydra(["+experiment=mae", "launcher=slurm", "trainer.devices=2"])
    assert (cpu.hydra.launcher.tasks_per_node, cpu.hydra.launcher.gpus_per_node) == (2, None)
    local = compose_with_hydra(["+experiment=mae"])
    assert local.hydra.launcher._target_.endswith("BasicLauncher") and local.hydra.mode is None
    assert local.slurm.requeue_signal == "USR1"  # sbatch/srun jobs started by hand requeue too


def compose_with_hydra(overrides: list[str]):
    """The composed config with its ``hydra`` node (resolve single keys only: some need a run)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_resources_and_signal_names_are_checked():
    assert tasks_per_node(4) == 4 and tasks_per_node("2") == 2 and tasks_per_node([0, 1, 2]) == 3
    assert gpus_per_node("gpu", 4) == 4 and gpus_per_node("cpu", 2) is None
    with pytest.raises(ValueError, match="trainer.devices as a count.*'auto'"):
        tasks_per_node("auto")
    with pytest.raises(ValueError, match="trainer.accelerator=cpu or gpu.*'auto'"):
        gpus_per_node("auto", 1)
    assert signal_number("USR1") == signal_number("SIGUSR1") == signal_number(10) == signal.SIGUSR1
    with pytest.raises(ValueError, match="slurm.requeue_signal='USR9'"):
        signal_number("USR9")


def test_a_sweep_claims_one_directory_per_process(tmp_path):
    first = resolve_sweep_dir(str(tmp_path / "mae"))
    assert Path(first).is_dir() and Path(first).name.startswith("multirun_")
    assert resolve_sweep_dir(str(tmp_path / "mae")) == first  # Hydra resolves it several times


@pytest.mark.slow
def test_local_sweep_runs_each_job_in_its_own_subdirectory(tmp_path):
    run_train_cli(
        [
            "-m",
            *TINY_MAE,
            "+experiment=mae",
            "data.img_size=32",
            "data.num_train=16",
            "data.num_val=8",
            "data.batch_size=8",
            "trainer.max_steps=1",
            "logger=none",
            "print_config=false",
            "masking.ratio=0.6,0.7",
        ],
        cwd=tmp_path,
    )
    (sweep,) = (tmp_path / "runs" / "train" / "mae").iterdir()  # nothing else: no stray run dir
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    assert [OmegaConf.load(sweep / n / "config.yaml").masking.ratio for n in "01"] == [0.6, 0.7]
    assert all((sweep / n / "checkpoints" / "last.ckpt").is_file() for n in "01")


# 8 steps per epoch, 2 epochs; the test callback signals this process at step 5.
IN_PROCESS = [
    *TINY_MAE,
    "+experiment=mae",
    "data.img_size=32",
    "data.num_train=64",
    "data.num_val=8",
    "data.batch_size=8",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "optim.warmup_epochs=0.5",
    "callbacks.reconstructions.every_n_steps=1000",
]


@pytest.fixture
def fake_slurm_job(monkeypatch, tmp_path):
    """This process looks like task 0 of SLURM job 4242; ``scontrol`` records its arguments."""
    for key, value in {
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "train-mae",
        "SLURM_NODELIST": "localhost",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.calls\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "scontrol.calls"


@pytest.mark.slow
def test_requeue_signal_saves_between_steps_and_the_requeued_job_resumes(
    compose_train, fake_slurm_job, monkeypatch
):
    signal_at_5 = [
        "+callbacks.sig._target_=tests.slurm_helpers.SignalAtStep",
        "+callbacks.sig.step=5",
    ]
    cfg = compose_train([*IN_PROCESS, *signal_at_5])
    run_dir = Path(cfg.paths.output_dir)
    previous_handler = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException: no result for submitit
        train(cfg)
    assert signal.getsignal(signal.SIGUSR1) == previous_handler  # handler removed again
    assert fake_slurm_job.read_text().split() == ["requeue", "4242"]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 5  # the step the signal came in, completed
    assert train_steps(run_dir) == list(range(5))

    # SLURM starts the job again: same command (no ckpt_path), same directory, a restart count.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    metrics, objects = train(compose_train(IN_PROCESS))
    assert objects["trainer"].global_step == 16
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.ckpt"}
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 16
    assert train_steps(run_dir) == list(range(16))  # continued, not restarted: each step once
    assert fake_slurm_job.read_text().split() == ["requeue", "4242"]  # not requeued again


def run(command: list[str], env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def cluster_is_up(env: dict) -> bool:
    if not SLURM_CONF.is_file() or shutil.which("sinfo") is None:
        return False
    try:
        states = run(["sinfo", "-h", "-o", "%T"], env, timeout=10).stdout.split()
    except subprocess.TimeoutExpired:
        return False
    return any(s in ("idle", "mixed", "allocated", "completing") for s in states)


# --- on the test cluster ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm_env() -> dict:
    """The environment for commands on the test cluster, which is started if it is not running."""
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher",
        reason="needs the slurm extra: pip install -e '.[slurm]'",
    )
    env = {
        **os.environ,
        "SLURM_CONF": str(SLURM_CONF),
        "PYTHONUNBUFFERED": "1",
        # the jobs import tests.slurm_helpers
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    if cluster_is_up(env):
        return env
    if os.geteuid() != 0:
        pytest.skip(
            "no SLURM test cluster is running and starting one needs root: sudo .ci/slurm/start.sh"
        )
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip(
            "no SLURM test cluster: .ci/slurm/start.sh installs Debian's packages, and this "
            "machine has no apt-get"
        )
    started = subprocess.run(
        ["bash", str(START_SCRIPT)], capture_output=True, text=True, timeout=900
    )
    if started.returncode != 0 or not cluster_is_up(env):
        pytest.fail(
            f"{START_SCRIPT} failed ({started.returncode}):\n{started.stdout}\n{started.stderr}"
        )
    return env


class Sweep:
    """``python -m maskfm.train ARGS`` started in the background; the jobs go to SLURM."""

    def __init__(self, args: list[str], cwd: Path, env: dict, name: str) -> None:
        self.cwd, self.env, self.name = cwd, env, name
        cwd.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maskfm.train", *args, f"hydra.launcher.name={name}"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output = ""
        self.elapsed = None
        self.signalled_at = None  # the step a job had reached when the test signalled it

    @property
    def dir(self) -> Path:
        found = list(self.cwd.glob("runs/train/mae/multirun_*"))
        return found[0] if len(found) == 1 else None

    def job_id(self, num: int) -> str | None:
        """``<array job>_<num>``, from submitit's folder of that job."""
        folders = list(self.dir.glob(f".submitit/*_{num}")) if self.dir else []
        return folders[0].name if folders else None

    def wait_for(self, what: str, condition, timeout: float = 120):
        """Poll ``condition()`` until it returns something true, and return that."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := condition():
                return value
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.finish(timeout=5)
        pytest.fail(
            f"{what} did not happen (sweep rc={self.proc.returncode}):\n{self.output[-5000:]}"
        )

    def finish(self, timeout: float = 300) -> int:
        try:
            self.output = self.proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.output = self.proc.communicate()[0]
            pytest.fail(f"the sweep did not end within {timeout} s:\n{self.output[-5000:]}")
        finally:
            self.elapsed = time.monotonic() - self.started
            subprocess.run(["scancel", "--name", self.name], env=self.env, capture_output=True)
        return self.proc.returncode


def progress(run_dir: Path) -> int | None:
    """The global step a job with ``SlowSteps`` has reached."""
    try:
        return int((run_dir / "progress.txt").read_text())
    except (FileNotFoundError, ValueError):
        return None


def train_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def slurm_job(job_id: str, env: dict) -> dict[str, str]:
    """``scontrol show job`` as a dict (finished jobs stay visible for MinJobAge = 300 s)."""
    text = run(["scontrol", "show", "job", "-o", job_id], env).stdout
    return dict(field.split("=", 1) for field in text.split() if "=" in field)


@pytest.fixture(scope="module")
def requeued_sweep(slurm_env, tmp_path_factory) -> Sweep:
    """A two-job sweep; job 0 gets SLURM's requeue signal (USR1) in its first epoch."""
    slow = [
        "+callbacks.slow._target_=tests.slurm_helpers.SlowSteps",
        "+callbacks.slow.seconds=0.3",
        "+callbacks.slow.progress_file=${paths.output_dir}/progress.txt",
    ]
    sweep = Sweep(
        [*SWEEP, *slow, "masking.ratio=0.6,0.7"],
        tmp_path_factory.mktemp("sweep"),
        slurm_env,
        name=f"maskfm-test-requeue-{os.getpid()}",
    )

    def job0_in_training() -> str | None:
        step = progress(sweep.dir / "0") if sweep.dir else None
        return sweep.job_id(0) if step is not None and step >= 4 else None

    job0 = sweep.wait_for("job 0 reaching step 4", job0_in_training)
    sweep.signalled_at = progress(sweep.dir / "0")
    signalled = run(["scancel", "--signal=USR1", job0], slurm_env)
    assert signalled.returncode == 0, signalled.stderr
    assert sweep.finish(timeout=300) == 0, sweep.output[-5000:]
    return sweep


@pytest.mark.slow
def test_sweep_runs_every_job_in_its_own_directory(requeued_sweep, slurm_env):
    sweep = requeued_sweep
    assert sorted(p.name for p in sweep.dir.iterdir()) == [".submitit", "0", "1", "multirun.yaml"]
    array_job = sweep.job_id(0).split("_")[0]
    # Both tasks finished and wrote submitit's "success" result. sacct's final state is
    # COMPLETED, or "CANCELLED by 0" when submitit, already holding the result, cancels the
    # job while srun is still tearing the step down (a race seen once in ~10 runs).
    for num in (0, 1):
        results = list((sweep.dir / ".submitit" / f"{array_job}_{num}").glob("*_result.pkl"))
        assert len(results) == 1 and pickle.loads(results[0].read_bytes())[0] == "success"
    sacct = run(["sacct", "-X", "-n", "-P", "-j", array_job, "-o", "JobID,State"], slurm_env).stdout
    states = dict(line.split("|", 1) for line in sacct.splitlines() if line.strip())
    assert set(states) == {f"{array_job}_0", f"{array_job}_1"}, sacct
    assert all(s == "COMPLETED" or s.startswith("CANCELLED by") for s in states.values()), sacct
    for num, ratio in enumerate([0.6, 0.7]):
        run_dir = sweep.dir / str(num)
        cfg = OmegaConf.load(run_dir / "config.yaml")
        assert cfg.masking.ratio == ratio and cfg.paths.output_dir == str(run_dir)
        # No last-v1.ckpt: the requeue checkpoint is ModelCheckpoint's own last.ckpt.
        assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.ckpt"}
        final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        assert final["global_step"] == EPOCHS * STEPS_PER_EPOCH and final["epoch"] == EPOCHS
        assert train_steps(run_dir) == list(range(EPOCHS * STEPS_PER_EPOCH))  # each step once
        assert (run_dir / "train.log").is_file() and (
            run_dir / ".hydra" / "overrides.yaml"
        ).is_file()


@pytest.mark.slow
def test_requeue_signal_saves_requeues_and_resumes_in_the_same_directory(requeued_sweep, slurm_env):
    sweep = requeued_sweep
    job0, job1 = sweep.job_id(0), sweep.job_id(1)
    log0 = "".join(p.read_text() for p in sorted((sweep.dir / ".submitit" / job0).glob("*_log.*")))
    stopped = re.search(
        r"Got SIGUSR1: stopping after step (\d+) to save a checkpoint and requeue job "
        + re.escape(job0),
        log0,
    )
    assert stopped, log0[-4000:]
    step = int(stopped.group(1))
    assert sweep.signalled_at <= step < EPOCHS * STEPS_PER_EPOCH
    own_checkpoint = sweep.dir / "0" / "checkpoints" / "last.ckpt"
    assert f"Saved {own_checkpoint} at global step {step}" in log0
    assert f"Requeued SLURM job {job0}; it will resume from {own_checkpoint}" in log0
    assert f"SLURM job {job0} was requeued (restart 1): resuming from {own_checkpoint}" in log0
    assert slurm_job(job0, slurm_env)["Restarts"] == "1"
    assert slurm_job(job1, slurm_env)["Restarts"] == "0"
    # The uninterrupted job 1 and the requeued job 0 end at the same global step.
    final = [
        torch.load(sweep.dir / n / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        for n in ("0", "1")
    ]
    assert final == [EPOCHS * STEPS_PER_EPOCH] * 2
    print(f"sweep with a requeue: {sweep.elapsed:.1f} s; job {job0} stopped after step {step}")


@pytest.mark.slow
def test_job_that_dies_hard_fails_the_sweep_promptly(slurm_env, tmp_path):
    die = [
        "+callbacks.die._target_=tests.slurm_helpers.DieAtStep",
        "+callbacks.die.step=2,1000",
        "trainer.max_epochs=1",
    ]
    sweep = Sweep([*SWEEP, *die], tmp_path, slurm_env, name=f"maskfm-test-crash-{os.getpid()}")
    assert sweep.finish(timeout=240) != 0
    job0 = sweep.job_id(0)
    # submitit asks sacct, sees FAILED, and names the job that left no result.
    assert re.search(
        rf"Job {job0} .*has not produced any output \(state: FAILED\)", sweep.output, re.DOTALL
    ), sweep.output[-5000:]
    assert sweep.elapsed < 120, f"the sweep took {sweep.elapsed:.0f} s to notice the dead job"
    print(f"dead job noticed after {sweep.elapsed:.1f} s")


# --- defaults that follow the job, and a refused submission in one line -------------------------


@pytest.mark.parametrize(
    "text,minutes",
    [
        ("UNLIMITED", None),
        ("infinite", None),
        ("1:00:00", 60),
        ("30:00", 30),
        ("2-00:00:00", 2880),
        ("1-12", 2160),
        ("45", 45),
        ("0:30:30", 31),
    ],
)
def test_slurm_time_formats(text, minutes):
    from maskfm.slurm import parse_slurm_minutes

    assert parse_slurm_minutes(text) == minutes


def test_sbatch_refusals_name_the_launcher_key():
    from maskfm.slurm import sbatch_refusal_message

    msg = sbatch_refusal_message(
        "sbatch: error: Batch job submission failed: More processors requested than permitted",
        {"cpus_per_task": 8},
    )
    assert msg == (
        "sbatch refused the job: 'Batch job submission failed: More processors requested than "
        "permitted'; change hydra.launcher.cpus_per_task (now 8)"
    )
    assert "hydra.launcher.timeout_min (now 1440)" in sbatch_refusal_message(
        "sbatch: error: Requested time limit is invalid (missing or exceeds some limit)",
        {"timeout_min": 1440},
    )


def test_cpus_follow_the_data_workers_and_time_the_partition(slurm_env, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])
    from maskfm.slurm import partition_time_limit

    assert (
        partition_time_limit("debug") == partition_time_limit(None) == 60
    )  # the test cluster's MaxTime
    assert partition_time_limit("no-such-partition") == 1440
    cfg = compose_with_hydra(["+experiment=mae", "launcher=slurm"])
    assert cfg.hydra.launcher.cpus_per_task == cfg.data.num_workers + 1 == 1
    assert cfg.hydra.launcher.timeout_min == 60
    cfg = compose_with_hydra(
        ["+experiment=mae", "launcher=slurm", "data=imagefolder", "data.root=/x"]
    )
    assert cfg.hydra.launcher.cpus_per_task == 9  # 8 loader workers + the rank


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,key",
    [
        ("hydra.launcher.cpus_per_task=8", "cpus_per_task (now 8)"),
        ("hydra.launcher.timeout_min=1440", "timeout_min (now 1440)"),
    ],
)
def test_a_refused_submission_ends_in_one_line(slurm_env, tmp_path, override, key):
    args = [
        sys.executable,
        "-m",
        "maskfm.train",
        "-m",
        "+experiment=mae",
        *TINY_MAE,
        "masking.ratio=0.6,0.7",
        "launcher=slurm",
        override,
        f"paths.log_dir={tmp_path}/runs",
        "print_config=false",
    ]
    proc = subprocess.run(
        args, cwd=tmp_path, env=slurm_env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert (
        len(errors) == 1
        and errors[0].startswith("error: sbatch refused the job: '")
        and key in errors[0]
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_the_readme_sweep_runs_with_the_defaults_on_a_small_cluster(slurm_env, tmp_path):
    """The README's sweep on a 2-CPU node with a 1-hour partition: no resource option needed."""
    args = [
        sys.executable,
        "-m",
        "maskfm.train",
        "-m",
        "+experiment=mae",
        *TINY_MAE,
        "masking.ratio=0.6,0.7",
        "launcher=slurm",
        "data.img_size=32",
        "data.num_train=16",
        "data.num_val=8",
        "data.batch_size=8",
        "trainer.max_steps=2",
        "callbacks.reconstructions.every_n_steps=0",
        "torch_threads=1",
        f"paths.log_dir={tmp_path}/runs",
        "print_config=false",
    ]
    proc = subprocess.run(
        args, cwd=tmp_path, env=slurm_env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    metrics = sorted((tmp_path / "runs" / "train" / "mae").glob("multirun_*/*/metrics.csv"))
    assert len(metrics) == 2  # each job left its metrics file (2 steps, below the logging interval)
    for path in metrics:
        rows = [r for r in csv.DictReader(open(path)) if r.get("train/loss")]
        assert [r["step"] for r in rows] == ["1"]
