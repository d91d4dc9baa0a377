"""Every ``python -m maskfm ...`` and ``make ...`` command in README.md's code blocks runs.

The commands are read from the README itself; each must have an entry in :data:`PLAN`, so a
command added to the README without a way to run it fails here, and so does one that stops
working. Commands run as written plus small-size overrides, on data the test writes in the
real on-disk layout where the README names a path; GPU-only, multi-node and SLURM-cluster
commands (and the ones that would start the suite itself) are composed (``--cfg job``) or
dry-run (``make -n``).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from maskfm.config import CONFIG_DIR
from maskfm.evaluate import evaluate
from maskfm.methods.point_mae import PointMAE
from maskfm.run_dir import register_resolvers
from maskfm.train import train
from tests.helpers import TINY_MAE, make_image_folder
from tests.test_eval_image_text import TINY_M3AE
from tests.test_evaluate import TINY_POINTS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def readme_commands(text: str = README) -> list[str]:
    """``python -m maskfm...`` / ``make ...`` lines of the fenced code blocks, continuation
    lines joined and trailing comments dropped."""
    commands = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = re.sub(r"\s+", " ", line)
            if line.startswith(("python -m maskfm", "make ")):
                commands.append(line)
    return commands


# Small sizes per method: the architecture kinds stay, the run takes seconds.
MAE_SMALL = [
    *TINY_MAE,
    "trainer.max_steps=2",
    "data.batch_size=4",
    "callbacks.reconstructions.every_n_steps=1",
]
RMAE_SMALL = [
    "data.point_cloud_range=[0.0,-6.4,-3.0,12.8,6.4,1.0]",
    "data.voxel_size=[0.8,0.8,0.1]",
    "data.batch_size=2",
    "trainer.max_steps=2",
    "eval.epochs=5",
]
POINT_SMALL = [
    o
    for o in TINY_POINTS
    if not o.startswith(("+experiment", "data.num_train", "data.num_val", "data.batch"))
] + ["data.batch_size=4", "trainer.max_steps=2"]
M3AE_SMALL = [
    o
    for o in TINY_M3AE
    if not o.startswith(("+experiment", "data.num_train", "data.num_val", "data.batch"))
] + ["data.batch_size=2", "trainer.max_steps=2", "eval.num_pairs=4", "eval.num_samples=8"]
EMBEDDED_SIZES = ["data.num_train=16", "data.num_val=8"]
# TINY_MAE's sizes, forced (``++``: the preset sizes are null) to match the imported files.
IMPORT_SMALL = [
    *("++" + o if o.split("=")[0] in ("model.embed_dim", "model.depth", "model.num_heads") else o
      for o in TINY_MAE),
    "data.img_size=32", "data.batch_size=4", "data.num_workers=0",
]  # fmt: skip  # only where the data source has them


def original_point_mae(path: Path) -> Path:
    from tests.test_point_methods import original_point_mae_state_dict

    torch.save({"base_model": original_point_mae_state_dict(PointMAE()), "epoch": 300}, path)
    return path


def modelnet40(path: Path) -> Path:
    from tests.test_data_points import make_modelnet

    return make_modelnet(path)


def kitti(path: Path) -> Path:
    from tests.test_data_lidar import make_kitti

    make_kitti(path)
    return path


def caption_folder(path: Path) -> Path:
    from tests.test_data_captions import png

    (path / "images").mkdir(parents=True)
    for i in range(4):
        (path / "images" / f"{i}.png").write_bytes(png((20 + 10 * i, 30)))
    rows = [
        {"image": f"{i}.png", "caption": f"a small picture number {i} with a red square"}
        for i in range(4)
    ]
    for split in ("train", "val"):
        (path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def scans(path: Path) -> Path:
    from tests.test_point_folder import make_folder

    return make_folder(path, {"rock": 6, "stick": 6})


def raw_modelnet40(path: Path) -> Path:
    """``<class>/{train,test}/<class>_XXXX.off`` with ModelNet40's glued headers."""
    pytest.importorskip("open3d", reason="sampling meshes needs the open3d extra")
    from tests.test_point_folder import CUBE, write_off

    for c, cls in enumerate(("bottle", "cone")):
        for split, n in (("train", 4), ("test", 2)):
            (path / cls / split).mkdir(parents=True)
            for i in range(n):
                write_off(path / cls / split / f"{cls}_{i:04d}.off", CUBE * (c + 1), glued=True)
    return path


def tiny_mae_for_import():
    """A MAE of TINY_MAE's sizes on 32 px pictures (the import commands' overrides)."""
    from maskfm.methods.mae import MAE

    torch.manual_seed(0)
    return MAE(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
               decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)  # fmt: skip


def mae_release(path: Path) -> Path:
    from maskfm.interop.mae import mae_state_dict

    torch.save({"model": mae_state_dict(tiny_mae_for_import())}, path)
    return path


def hf_vitmae_dir(path: Path) -> Path:
    from maskfm.interop.hf_vitmae import export_hf_vitmae

    return export_hf_vitmae(tiny_mae_for_import(), path)[0]


# Paths the README uses as examples -> the real format the test writes there.
PLACEHOLDERS = {
    "~/scans": scans,
    "/data/ModelNet40": raw_modelnet40,
    "~/pictures": lambda p: make_image_folder(p, per_class=4),
    "~/pictures_val": lambda p: make_image_folder(p, per_class=2),
    "/path/to/mae_pretrain_vit_base.pth": mae_release,
    "/path/to/vit-mae-base": hf_vitmae_dir,
    "/data/ModelNet/modelnet40_normal_resampled": modelnet40,
    "/path/to/Point-MAE/pretrain.pth": original_point_mae,
    "/data/kitti": kitti,
    "/data/captions": caption_folder,
}

# README command -> (how, extra overrides, experiment to train first for ckpt_path=last).
# how: "run" in-process as written + extras; "compose": build the config only (--cfg job);
# "cli": a real subprocess; "dry": make -n.
PLAN: dict[str, tuple[str, list[str], str | None]] = {
    "make train": ("cli", ["ARGS=" + " ".join([*MAE_SMALL, *EMBEDDED_SIZES])], None),
    "make test": ("dry", [], None),  # the suite itself
    "python -m maskfm.train +experiment=mae model.size=small masking=block masking.ratio=0.6": (
        "run",
        ["trainer.max_steps=2", "data.batch_size=4", *EMBEDDED_SIZES],
        None,
    ),
    "python -m maskfm.train +experiment=mae data=imagefolder data.root=~/pictures data.img_size=224": (
        "run",
        [*MAE_SMALL, "data.num_workers=0"],
        None,
    ),
    "python -m maskfm.train +experiment=mae trainer=gpu data.batch_size=256": ("compose", [], None),
    "python -m maskfm.train +experiment=mae logger=wandb": (
        "run",
        [*MAE_SMALL, *EMBEDDED_SIZES],
        None,
    ),
    "python -m maskfm.train +experiment=mae trainer=debug": (
        "run",
        [*MAE_SMALL, *EMBEDDED_SIZES],
        None,
    ),
    "python -m maskfm.train +experiment=point_cmae trainer=ddp trainer.devices=8": (
        "compose",
        [],
        None,
    ),
    "python -m maskfm.train +experiment=point_mae trainer=ddp_cpu": (
        "compose",
        [],
        None,
    ),  # tests/test_ddp.py runs it
    "python -m maskfm.train +experiment=mae --cfg job": ("compose", [], None),
    "python -m maskfm.train +experiment=point_mae data=modelnet40 data.root=/data/ModelNet/modelnet40_normal_resampled": (
        "run",
        [
            *POINT_SMALL,
            "data.num_workers=0",
            "data.num_points=64",
            "model.num_groups=8",
            "model.group_size=8",
        ],
        None,
    ),
    "python -m maskfm.train +experiment=point_mae data=point_folder data.root=~/scans": (
        "run",
        [*POINT_SMALL, "data.num_workers=0"],
        None,
    ),
    "python -m maskfm.evaluate +experiment=point_mae eval=svm data=point_folder data.root=~/scans ckpt_path=last": (
        "run",
        [*POINT_SMALL, "data.num_workers=0", *EMBEDDED_SIZES],
        "point_mae",
    ),
    "python -m maskfm.train +experiment=point_mae data=point_folder data.root=/data/ModelNet40 data.mesh_sampling=poisson": (
        "run",
        [*POINT_SMALL, "data.num_workers=0", "data.mesh_points=512"],
        None,
    ),
    "python -m maskfm.train +experiment=rmae data=kitti data.root=/data/kitti": (
        "run",
        [
            "data.voxel_size=[0.4,0.4,0.1]",
            "data.batch_size=2",
            "trainer.max_steps=2",
            "data.num_workers=0",
        ],
        None,
    ),  # the whole KITTI range: the fixture's points spread over 60 m
    "python -m maskfm.train +experiment=m3ae data=caption_folder data.root=/data/captions": (
        "run",
        [*M3AE_SMALL, "data.num_workers=0", "data.img_size=32"],
        None,
    ),
    "python -m maskfm.evaluate +experiment=point_mae eval=svm ckpt_path=last": (
        "run",
        [*POINT_SMALL, *EMBEDDED_SIZES],
        "point_mae",
    ),
    "python -m maskfm.evaluate +experiment=point_mae eval=svm": (
        "run",
        [*POINT_SMALL, *EMBEDDED_SIZES],
        None,
    ),
    "python -m maskfm.evaluate +experiment=rmae eval=voxel_probe ckpt_path=last": (
        "run",
        [*RMAE_SMALL, "data.num_train=2", "data.num_val=2"],
        "rmae",
    ),
    "python -m maskfm.evaluate +experiment=m3ae eval=mlm_probe ckpt_path=last": (
        "run",
        [*M3AE_SMALL, *EMBEDDED_SIZES],
        "m3ae",
    ),
    "python -m maskfm.evaluate +experiment=m3ae eval=retrieval ckpt_path=last": (
        "run",
        [*M3AE_SMALL, *EMBEDDED_SIZES],
        "m3ae",
    ),
    "python -m maskfm.evaluate +experiment=point_mae_shapenet eval=svm trainer=cpu data=modelnet40 "
    "data.root=/data/ModelNet/modelnet40_normal_resampled ckpt_path=/path/to/Point-MAE/pretrain.pth": (
        "run",
        ["data.batch_size=3", "data.num_workers=0", "data.num_points=64"],
        None,
    ),
    "python -m maskfm.evaluate +experiment=mae eval=linear_probe ckpt_path=last": (
        "run",
        [*MAE_SMALL, *EMBEDDED_SIZES, "eval.epochs=3"],
        "mae",
    ),
    "python -m maskfm.evaluate +experiment=mae eval=knn ckpt_path=last": (
        "run",
        [*MAE_SMALL, *EMBEDDED_SIZES],
        "mae",
    ),
    "python -m maskfm.evaluate +experiment=point_mae eval=knn ckpt_path=last": (
        "run",
        [*POINT_SMALL, *EMBEDDED_SIZES],
        "point_mae",
    ),
    "python -m maskfm.evaluate +experiment=mae data=imagefolder data.root=~/pictures data.val_fraction=0.2 eval=knn": (
        "run",
        [*MAE_SMALL, "data.num_workers=0", "data.img_size=32"],
        None,
    ),
    "python -m maskfm.evaluate +experiment=mae_vit_base_imagenet eval=linear_probe_mae trainer=gpu "
    "data.root=/data/imagenet/train data.val_root=/data/imagenet/val ckpt_path=last": (
        "compose",
        [],
        None,
    ),  # a GPU and ImageNet
    "python -m maskfm.train -m +experiment=mae masking.ratio=0.6,0.7 launcher=slurm hydra.launcher.partition=gpu": (
        "compose",
        [],
        None,
    ),  # tests/test_slurm.py submits sweeps to the real cluster
    "python -m maskfm.train +experiment=mae trainer=ddp trainer.devices=8 trainer.num_nodes=2 launcher=slurm": (
        "compose",
        [],
        None,
    ),
    "python -m maskfm.bench +experiment=mae": (
        "run",
        [
            "model.depth=1",
            "data.batch_size=4",
            "bench.steps=1",
            "bench.warmup_steps=0",
            "bench.device=cpu",
            *EMBEDDED_SIZES,
        ],
        None,
    ),
    "python -m maskfm.evaluate +experiment=mae_vit_base_imagenet eval=svm data.root=~/pictures "
    "data.val_root=~/pictures_val ckpt_path=/path/to/mae_pretrain_vit_base.pth": (
        "run",
        IMPORT_SMALL,
        None,
    ),
    "python -m maskfm.evaluate +experiment=mae_vit_base_imagenet eval=svm data.root=~/pictures "
    "data.val_root=~/pictures_val ckpt_path=/path/to/vit-mae-base": (
        "run",
        IMPORT_SMALL,
        None,
    ),
    "python -m maskfm.export +experiment=mae ckpt_path=last export.format=timm": (
        "run",
        [*MAE_SMALL, *EMBEDDED_SIZES],
        "mae",
    ),
    "python -m maskfm.export +experiment=mae ckpt_path=last export.format=hf": (
        "run",
        [*MAE_SMALL, *EMBEDDED_SIZES],
        "mae",
    ),
    "python -m maskfm.export +experiment=mae ckpt_path=last export.format=original": (
        "run",
        [*MAE_SMALL, *EMBEDDED_SIZES],
        "mae",
    ),
    "python -m maskfm.export +experiment=point_mae ckpt_path=last export.format=original": (
        "run",
        [*POINT_SMALL, *EMBEDDED_SIZES],
        "point_mae",
    ),
    "python -m maskfm.export +experiment=rmae ckpt_path=last export.format=openpcdet": (
        "run",
        [*RMAE_SMALL, "data.num_train=2", "data.num_val=2"],
        "rmae",
    ),
    "make test-fast": ("dry", [], None),
    "make lint": ("cli", [], None),
}


def test_every_readme_command_has_a_plan():
    commands = readme_commands()
    assert len(commands) >= 20
    assert sorted(set(commands) - set(PLAN)) == [], "README commands this test does not run"
    assert sorted(set(PLAN) - set(commands)) == [], "planned commands no longer in the README"


def substitute(args: list[str], data: Path) -> list[str]:
    """README example paths -> files the test writes in that format."""
    out = []
    for arg in args:
        for placeholder, make in PLACEHOLDERS.items():
            if arg.endswith("=" + placeholder):
                target = data / placeholder.strip("/~").replace("/", "_")
                if not target.exists():
                    make(target)
                arg = arg[: -len(placeholder)] + str(target)
        out.append(arg)
    return out


def compose_for(
    config_name: str,
    overrides: list[str],
    tmp_path: Path,
    hydra_config: bool = False,
    output_dir: Path | None = None,
):
    register_resolvers()
    paths = [
        f"paths.log_dir={tmp_path}/runs",
        f"paths.output_dir={output_dir or tmp_path / 'run'}",
        f"paths.data_dir={tmp_path}/data",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name,
            overrides=[*overrides, *paths, "print_config=false"],
            return_hydra_config=hydra_config,
        )


def existing(cfg, overrides: list[str]) -> list[str]:
    """Keep only the size overrides whose key the composed config has (data sources differ)."""
    return [
        o
        for o in overrides
        if OmegaConf.select(cfg, o.split("=", 1)[0].lstrip("+")) is not None or o.startswith("+")
    ]


def run_in_process(
    command: str, extras: list[str], train_first: str | None, tmp_path: Path, monkeypatch
):
    words = shlex.split(command)
    module, args = words[2], words[3:]
    args = substitute(args, tmp_path / "data")
    entry = module.rsplit(".", 1)[-1]
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    if train_first:  # ckpt_path=last: a training run of that experiment in the same log directory
        base = [a for a in args if a.startswith("+experiment=")]
        cfg = compose_for("train", base + ["trainer.max_steps=2"], tmp_path)
        cfg = compose_for(
            "train",
            base + existing(cfg, [e for e in extras if not e.startswith("eval.")]),
            tmp_path,
            output_dir=tmp_path / "runs" / "train" / train_first / "2026-01-01_00-00-00_000000",
        )
        train(cfg)
    probe = compose_for(entry, args, tmp_path)
    cfg = compose_for(entry, args + existing(probe, extras), tmp_path)
    if entry == "train":
        metrics, objects = train(cfg)
        assert objects["trainer"].global_step >= 1 and torch.isfinite(
            torch.tensor(metrics["train/loss"])
        )
        assert (tmp_path / "run" / "metrics.csv").is_file()
    elif entry == "evaluate":
        result = evaluate(cfg)
        assert json.loads((tmp_path / "run" / "eval.json").read_text()) == result
        if train_first:
            assert result["checkpoint"].startswith(str(tmp_path / "runs" / "train" / train_first))
            assert result["required_loaded"] == result["required_tensors"]
    elif entry == "export":
        from maskfm.export import export

        result = export(cfg)
        assert Path(result["path"]).exists() and (tmp_path / "run" / "export.json").is_file()
        assert result["source"]["checkpoint"].startswith(str(tmp_path / "runs" / "train"))
    else:
        from maskfm.bench import bench

        result = bench(cfg)
        assert result["train_step"]["samples_per_sec"] > 0


def compose_only(command: str, tmp_path: Path):
    words = shlex.split(command)
    entry = words[2].rsplit(".", 1)[-1]
    args = [w for w in words[3:] if w not in ("-m", "--cfg", "job")]
    sweeps = [
        a for a in args if "," in a.split("=", 1)[-1] and not a.split("=", 1)[-1].startswith("[")
    ]
    for value_set in (
        [a.split("=", 1)[0] + "=" + v for v in a.split("=", 1)[1].split(",")] for a in sweeps
    ):
        for one in value_set:  # each job of a -m sweep composes
            cfg = compose_for(
                entry, [x for x in args if x not in sweeps] + [one], tmp_path, hydra_config=True
            )
    cfg = compose_for(entry, [x for x in args if x not in sweeps], tmp_path, hydra_config=True)
    if "launcher=slurm" in args:
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("SlurmLauncher")
        assert (
            launcher.tasks_per_node == cfg.trainer.devices
            and launcher.nodes == cfg.trainer.num_nodes
        )
    if "trainer.devices=8" in args:
        assert cfg.trainer.devices == 8


@pytest.mark.slow
@pytest.mark.parametrize("command", list(PLAN), ids=lambda c: c.split("maskfm.")[-1][:60])
def test_readme_command_runs(command, tmp_path, monkeypatch):
    how, extras, train_first = PLAN[command]
    if how == "run":
        run_in_process(command, extras, train_first, tmp_path, monkeypatch)
    elif how == "compose":
        compose_only(command, tmp_path)
    elif how == "dry":
        proc = subprocess.run(
            ["make", "-n", *shlex.split(command)[1:]], cwd=REPO, capture_output=True, text=True
        )
        assert proc.returncode == 0 and "pytest" in proc.stdout, proc.stderr
    else:  # cli: the real command, from the repository root as a user types it
        words = shlex.split(command)
        if words[:2] == ["make", "train"]:
            words = [
                "make",
                "train",
                f"ARGS={extras[0].split('=', 1)[1]} paths.log_dir={tmp_path}/runs",
            ]
        proc = subprocess.run(words, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        if words[:2] == ["make", "train"]:
            run = next((tmp_path / "runs" / "train" / "mae").iterdir())
            assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
            assert list((run / "reconstructions").glob("*.png")) and "config" in proc.stdout
