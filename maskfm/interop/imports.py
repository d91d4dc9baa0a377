"""Loading another repository's weights into the method the composed config builds."""

from __future__ import annotations

from torch import nn

from maskfm.errors import UserInputError
from maskfm.interop.formats import WeightFile
from maskfm.interop.loading import LoadReport


def import_weights(
    model: nn.Module, source: WeightFile, allow_partial: bool = False, trust_pickle: bool = False
) -> LoadReport:
    """Load an original (``mae``, ``point_mae``) or Hugging Face (``hf_vitmae``) weight file
    into ``model`` with a load report; the method must be one those weights fit."""
    from maskfm.nn.point_patch_mae import PointPatchAutoencoder
    from maskfm.nn.vit import ViTEncoder

    built = type(model).__name__
    if source.format in ("mae", "hf_vitmae"):
        if not isinstance(getattr(model, "encoder", None), ViTEncoder):
            raise UserInputError(
                f"{source.path}: an {source.label} checkpoint (a ViT), but the composed config "
                f"builds {built}: use +experiment=mae (or mae_vit_base_imagenet, m3ae)"
            )
        if source.format == "hf_vitmae":
            from maskfm.interop.hf_vitmae import load_hf_vitmae

            return load_hf_vitmae(model, source.path, allow_partial, trust_pickle)
        from maskfm.interop.mae import load_mae_state_dict

        return load_mae_state_dict(
            model,
            source.state_dict(),
            str(source.path),
            allow_partial,
            f"an {source.label} checkpoint",
        )
    if source.format == "point_mae":
        if not isinstance(model, PointPatchAutoencoder):
            raise UserInputError(
                f"{source.path}: an original Point-MAE checkpoint, but the composed config "
                f"builds {built}: use +experiment=point_mae_shapenet (or point_mae, point_cmae)"
            )
        from maskfm.interop.point_mae import load_point_mae_state_dict

        return load_point_mae_state_dict(
            model, source.state_dict(), str(source.path), allow_partial
        )
    raise ValueError(f"{source.path}: {source.format} weights are not imported here")
