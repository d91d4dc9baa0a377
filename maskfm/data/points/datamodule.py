"""The point-cloud DataModule: loaders over any registered format (:mod:`.registry`)."""

from __future__ import annotations

from typing import Any, cast

from lightning.fabric.utilities.data import AttributeDict
from torch.utils.data import DataLoader, Dataset

from maskfm.data.base import LoaderDataModule
from maskfm.data.points.common import _SPLITS, scale_and_translate
from maskfm.data.points.registry import POINT_DATASETS, PointSet
from maskfm.errors import UserInputError


class PointCloudDataModule(LoaderDataModule):
    """Point-cloud loaders: train (shuffled, drop_last), val (test split) and SVM-eval loaders.

    ``dataset`` picks the source: "synthetic" (:class:`SyntheticShapes3D`, ``num_train`` /
    ``num_val`` samples, ``seed``), "shapenet55", "modelnet40" or "scanobjectnn" (``root``
    required; ``num_train`` / ``num_val`` / ``seed`` unused), or any other format registered
    with :func:`~maskfm.data.points.registry.register_point_dataset`. ``eval_dataloaders()`` returns
    unshuffled, unaugmented ``(train, test)`` loaders of ``eval_dataset`` (default: ``dataset``;
    e.g. pre-train on ShapeNet-55 and evaluate a linear SVM on ModelNet40 with ``eval_root``),
    sampled deterministically. ``batch_size`` is per device. "point_folder"
    (:mod:`.folder`) also reads ``test_fraction``, ``mesh_sampling`` and ``mesh_points``; an
    unlabelled folder has no ``eval_dataloaders()``.

    With ``augment`` the train batches get :func:`scale_and_translate` in
    ``on_after_batch_transfer`` (on the device, vectorised, torch RNG) while
    ``trainer.training``; validation and eval batches are never augmented.
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        num_points: int = 1024,
        batch_size: int = 32,
        num_workers: int = 0,
        augment: bool = True,
        skip_corrupt: bool = False,
        variant: str | None = None,
        num_train: int = 2048,
        num_val: int = 512,
        seed: int = 0,
        trust_pickle: bool = False,
        eval_dataset: str | None = None,
        eval_root: str | None = None,
        eval_variant: str | None = None,
        sampling: str = "fps",
        cache_dir: str | None = None,
        whole: bool = False,
        pin_memory: bool = False,
        test_fraction: float = 0.2,
        mesh_sampling: str = "uniform",
        mesh_points: int = 8192,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for name in (dataset, eval_dataset):
            if name is not None:
                POINT_DATASETS.check(name)
        if POINT_DATASETS[dataset].generated and num_train < batch_size:
            raise ValueError(
                f"num_train={num_train} is smaller than batch_size={batch_size}; "
                "with drop_last=True the train loader would be empty"
            )
        self.eval_name = eval_dataset or dataset
        if eval_dataset is None or eval_dataset == dataset:
            eval_root = root if eval_root is None else eval_root
            eval_variant = variant if eval_variant is None else eval_variant
        for name, v in ((dataset, variant), (self.eval_name, eval_variant)):
            if v is not None and not POINT_DATASETS[name].variants:
                takes = " or ".join(
                    repr(n) for n in POINT_DATASETS.names() if POINT_DATASETS[n].variants
                )
                raise ValueError(f"variant={v!r} only applies to dataset {takes}, not {name!r}")
        self.dataset = dataset
        self.root, self.eval_root = root, eval_root
        self.variant, self.eval_variant = variant, eval_variant
        self.num_points = num_points
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.pin_memory = pin_memory
        self.class_names = self._classes(dataset, root)
        self.num_classes = len(self.class_names)
        self.eval_class_names = (
            self.class_names if self.eval_name == dataset and eval_root == root
            else self._classes(self.eval_name, eval_root)
        )  # fmt: skip
        self.eval_num_classes = len(self.eval_class_names)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._eval_sets: tuple[Dataset, Dataset] | None = None

    @staticmethod
    def _classes(name: str, root: str | None) -> list[str]:
        fmt = POINT_DATASETS[name]
        if not fmt.generated and root is None:
            raise ValueError(f"dataset {name!r} needs a root folder (got root=None)")
        return fmt.classes(root)

    def _make(self, name: str, split: str, *, eval_set: bool) -> Dataset:
        root = self.eval_root if eval_set else self.root
        variant = self.eval_variant if eval_set else self.variant
        hp = cast(AttributeDict, self.hparams)
        request = PointSet(split, root, variant, eval_set, self.num_points, hp)
        return POINT_DATASETS[name].make(request)

    def prepare_data(self) -> None:
        """Build the formats marked ``build_once`` (ModelNet40's caches) once (local rank 0)
        before ``setup`` on every rank."""
        if POINT_DATASETS[self.dataset].build_once:
            for split in _SPLITS:
                self._make(self.dataset, split, eval_set=False)
        if POINT_DATASETS[self.eval_name].build_once and (
            self.dataset != self.eval_name or self.eval_root != self.root
        ):
            for split in _SPLITS:
                self._make(self.eval_name, split, eval_set=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._make(self.dataset, "train", eval_set=False)
            self.val_set = self._make(self.dataset, "test", eval_set=False)

    def eval_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """(train, test) loaders of the eval dataset: unshuffled, unaugmented, deterministic."""
        if not self.eval_class_names:
            raise UserInputError(
                f"data.eval_dataset={self.eval_name!r} under '{self.eval_root}' has no classes "
                "(an unlabelled point folder: no class sub-folders), so there is nothing to "
                "evaluate; put its files in <root>/<class>/ folders or set data.eval_dataset "
                "and data.eval_root to a labelled set"
            )
        if self._eval_sets is None:
            self._eval_sets = (
                self._make(self.eval_name, "train", eval_set=True),
                self._make(self.eval_name, "test", eval_set=True),
            )
        return self.loader(self._eval_sets[0], train=False), self.loader(
            self._eval_sets[1], train=False
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if self.augment and trainer is not None and trainer.training and isinstance(batch, dict):
            batch = {**batch, "points": scale_and_translate(batch["points"])}
        return batch
