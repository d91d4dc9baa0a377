"""The parts of a masked autoencoder over point patches (Point-MAE), for methods to compose.

:class:`PointPatchAutoencoder` is a mixin: :meth:`build_point_patch_parts` adds the grouper
(FPS + kNN), the visible-only patch encoder and a decoder under the released names
(``grouper``, ``encoder``, ``decoder``), and the methods give the steps every point-patch
method shares: group, layout, encode-visible/decode-hidden, Chamfer loss, frozen features,
reconstruction clouds. Point-MAE and Point-CMAE compose it; neither subclasses the other.

Dimension letters: B batch, N points, G groups, M points per group, H hidden groups.
"""

from __future__ import annotations

import torch

from maskfm.masking import TokenLayout, gather_tokens, scatter_tokens
from maskfm.methods.output import MaskedModelingOutput
from maskfm.nn.chamfer import chamfer_l1, chamfer_l2
from maskfm.nn.point_transformer import PointPatchDecoder, PointPatchEncoder
from maskfm.tokens.group import PointGrouper, PointGroups

CHAMFER = {"cdl2": chamfer_l2, "cdl1": chamfer_l1}


class PointPatchAutoencoder:
    """Mixin for ``nn.Module`` methods over point patches (see the module docstring)."""

    grouper: PointGrouper
    encoder: PointPatchEncoder
    decoder: PointPatchDecoder
    media = ("clouds",)

    def build_point_patch_parts(
        self,
        num_groups: int,
        group_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        drop_path_rate: float,
        decoder_depth: int,
        decoder_num_heads: int,
        loss: str,
        pointnet_hidden,
    ) -> None:
        if loss not in CHAMFER:
            raise ValueError(f"loss must be one of {list(CHAMFER)}, got {loss!r}")
        self.chamfer = CHAMFER[loss]
        self.grouper = PointGrouper(num_groups, group_size)
        self.encoder = PointPatchEncoder(
            embed_dim, depth, num_heads, drop_path_rate, pointnet_hidden
        )
        self.decoder = PointPatchDecoder(
            group_size, embed_dim, decoder_depth, decoder_num_heads, drop_path_rate
        )

    def group(self, points: torch.Tensor) -> PointGroups:
        return self.grouper(points)

    def layout(self, groups: PointGroups) -> TokenLayout:
        """Patch centres; the encoder batches visible patches, so counts are equal per cloud."""
        return TokenLayout.points(groups.centers, equal_counts=True)

    def reconstruct(
        self,
        groups: PointGroups,
        mask: torch.Tensor,
        decoder: PointPatchDecoder,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        """Encode visible patches (after optional prefix tokens), decode the hidden ones.

        Returns ``pred (B, H, M, 3)``, ``target (B, H, M, 3)`` (hidden patches in token order)
        and the decoder's pre-norm features of all tokens in original order ``(B, G, C)``.
        """
        latent, idx = self.encoder(groups.neighborhood, groups.centers, mask, prefix=prefix)
        n_prefix = 0 if prefix is None else prefix[0].shape[1]
        pred, feats = decoder(latent[:, n_prefix:], groups.centers, idx)
        target = gather_tokens(groups.neighborhood, idx.ids_masked)
        return pred, target, feats

    def forward_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Chamfer distance between each predicted and true hidden patch (batch of B*H sets)."""
        return self.chamfer(pred.flatten(0, 1), target.flatten(0, 1))

    @staticmethod
    def at_every_token(pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, H, M, 3)`` hidden-patch predictions -> ``(B, G, M, 3)`` aligned with ``mask``
        (zeros at visible patches), the layout of :class:`MaskedModelingOutput.pred`."""
        ids_masked = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[
            :, mask.shape[1] - pred.shape[1] :
        ]
        return scatter_tokens(pred, ids_masked, mask.shape[1])

    def output(
        self,
        loss: torch.Tensor,
        parts: dict,
        pred: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        groups: PointGroups,
    ) -> MaskedModelingOutput:
        return MaskedModelingOutput(
            loss=loss,
            parts=parts,
            pred=self.at_every_token(pred, mask),
            mask=mask,
            extras={"centers": groups.centers, "target": target},
        )

    @torch.no_grad()
    def features(self, batch: dict) -> torch.Tensor:
        """``(B, G, C)`` encoder tokens of every patch, nothing hidden (for evaluation)."""
        groups = self.group(batch["points"])
        tokens, _ = self.encoder(groups.neighborhood, groups.centers)
        return tokens

    @torch.no_grad()
    def reconstruction_clouds(
        self, batch: dict, out: MaskedModelingOutput
    ) -> dict[str, torch.Tensor]:
        """Point clouds ``(B, P, 3)`` to look at: input, visible patches, visible + predicted."""
        groups = self.group(batch["points"])
        b = groups.neighborhood.shape[0]
        absolute = groups.neighborhood + groups.centers[:, :, None]
        assert out.pred is not None and out.mask is not None, (
            "a point-patch forward sets pred and mask"
        )
        visible = absolute[~out.mask].reshape(b, -1, 3)
        hidden_centers = out.extras["centers"][out.mask].reshape(b, -1, 1, 3)
        predicted = (
            out.pred[out.mask].reshape(b, -1, *out.pred.shape[2:]) + hidden_centers
        ).reshape(b, -1, 3)
        return {
            "input": batch["points"],
            "visible": visible,
            "reconstruction": torch.cat([visible, predicted], dim=1),
        }
