import os
import time

from maskfm.run_dir import (
    latest_checkpoint,
    latest_run_with_checkpoint,
    new_run_dir,
    resolve_run_dir,
)


def touch(path, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))


def test_new_run_dirs_never_collide(tmp_path):
    dirs = {new_run_dir(tmp_path) for _ in range(50)}
    assert len(dirs) == 50 and all(d.is_dir() for d in dirs)


def test_latest_checkpoint_prefers_newest_and_ignores_partial_writes(tmp_path):
    now = time.time()
    touch(tmp_path / "checkpoints" / "last.ckpt", now - 10)
    touch(tmp_path / "checkpoints" / "step_000008.ckpt", now - 5)
    touch(tmp_path / "checkpoints" / "last.ckpt.tmp", now)
    assert latest_checkpoint(tmp_path).name == "step_000008.ckpt"
    touch(tmp_path / "checkpoints" / "last.ckpt", now - 5)
    assert latest_checkpoint(tmp_path).name == "last.ckpt"  # a tie goes to last.ckpt
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_ckpt_path_last_resolves_to_latest_run_with_a_checkpoint(tmp_path):
    now = time.time()
    touch(tmp_path / "2026-01-01_00-00-00_000001" / "checkpoints" / "last.ckpt", now - 100)
    touch(tmp_path / "2026-01-02_00-00-00_000001" / "checkpoints" / "last.ckpt", now - 50)
    (tmp_path / "2026-01-03_00-00-00_000001").mkdir()  # newer, but crashed before any checkpoint
    assert latest_run_with_checkpoint(tmp_path).name == "2026-01-02_00-00-00_000001"
    assert resolve_run_dir(str(tmp_path), "last").endswith("2026-01-02_00-00-00_000001")
    explicit = tmp_path / "2026-01-01_00-00-00_000001" / "checkpoints" / "last.ckpt"
    assert resolve_run_dir(str(tmp_path), str(explicit)).endswith("2026-01-01_00-00-00_000001")
    fresh = resolve_run_dir(str(tmp_path), None)
    assert fresh not in {str(p) for p in tmp_path.iterdir()} - {fresh}
    assert resolve_run_dir(str(tmp_path), None) == fresh  # memoised: Hydra asks twice
