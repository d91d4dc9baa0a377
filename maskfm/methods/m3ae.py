"""M3AE: Multi-Modal Masked Autoencoders for Medical Vision-and-Language Pre-Training
(Chen et al., MICCAI 2022).

Faithful to zhjohnchan/M3AE (``M3AETransformerSS``, ``objectives.py``, ``prediction_heads.py``):

* a ViT image encoder and a transformers text encoder (RoBERTa in the release), each
  projected to the fusion width and tagged with a modality-type embedding (text 0, image 1);
* ``fusion.depth`` co-attention layers per modality (:mod:`maskfm.nn.fusion`), poolers
  (Linear + Tanh) on the first token of each stream;
* three objectives, each its own forward pass as released:
  - **mim**: image patches hidden (75 %), text intact; an MAE decoder reads the fused image
    tokens after fusion layer ``mim_layer`` (3 of 6) and predicts normalised pixels;
  - **mlm**: whole words hidden (15 %, 80/10/10 corruption), image intact; an MLP head reads
    the last fusion layer's text tokens;
  - **itm**: exactly half the pairs get another image of the batch; a linear head on the two
    pooled vectors says matched or not.

``joint_pass=True`` runs one pass instead of three (both modalities masked, half the images
swapped): ITM is scored on every pair, MIM and MLM only on the matched pairs, since a swapped
image cannot explain its caption. It is about three times cheaper and not the released recipe.

Dimension letters: B batch, N patches, V visible patches, L text tokens, D fusion width.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from maskfm.interop.pretrained import build_text_encoder, load_image_weights
from maskfm.masking import (
    Masker,
    RandomMasker,
    TokenLayout,
    WholeWordMasker,
    mask_indices,
    mlm_corrupt,
)
from maskfm.methods.contract import MaskedMethod
from maskfm.methods.output import MaskedModelingOutput
from maskfm.nn.fusion import CoAttentionFusion
from maskfm.nn.heads import MLMHead, Pooler, bert_init
from maskfm.nn.losses import masked_mse, pixel_target
from maskfm.nn.mae_decoder import MAEDecoder, PixelReconstruction
from maskfm.nn.vit import VIT_SIZES, ViTEncoder

log = logging.getLogger(__name__)

IGNORE = -100  # label of tokens that MLM does not score (cross-entropy's ignore_index)


@dataclass
class ImageEncoderConfig:
    """The ViT: ``size`` preset, explicit sizes override it; ``pretrained`` = a local file
    holding a timm-named state dict (``.pth``/``.bin``/``.safetensors``), opt-in."""

    img_size: int = 288
    patch_size: int = 16
    in_chans: int = 3
    size: str = "base"
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    pretrained: str | None = None
    allow_partial: bool = False  # accept a ``pretrained`` file that sets only part of the ViT


@dataclass
class TextEncoderConfig:
    """A transformers encoder built from a config (random init), or ``pretrained`` = a local
    directory saved with ``save_pretrained`` (nothing is downloaded)."""

    model_type: str = "roberta"
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    dropout: float = 0.1
    pretrained: str | None = None
    allow_partial: bool = (
        False  # accept a ``pretrained`` directory that sets only part of the encoder
    )


@dataclass
class FusionConfig:
    dim: int = 768
    depth: int = 6
    num_heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.1


@dataclass
class DecoderConfig:
    """MIM decoder. The release builds ``mim_decoder_num_layers + 1`` = 4 + 1 = 5 blocks."""

    embed_dim: int = 384
    depth: int = 5
    num_heads: int = 6


def _config(cls, value: Any, name: str):
    if isinstance(value, cls):
        return value
    value = dict(value or {})
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(value) - known)
    if unknown:
        raise TypeError(f"model.{name}: unknown keys {unknown}; expected some of {sorted(known)}")
    return cls(**value)


@dataclass
class Fused:
    """Outputs of one pass through encoders and fusion."""

    image: list[torch.Tensor]  # per fusion layer, (B, 1 + V, D)
    text: list[torch.Tensor]  # per fusion layer, (B, L, D)


class M3AE(PixelReconstruction, MaskedMethod):
    """Image-text masked autoencoder (see the module docstring).

    Args:
        masker: image patch masker (released: random 75 %).
        text_masker: token masker over a ``sequence`` layout whose groups are word ids
            (released: whole words, 15 %).
        vocab_size, pad_token_id, mask_token_id: the tokenizer's, passed by the datamodule.
        image, text, fusion, decoder: sub-configs (:class:`ImageEncoderConfig`, ...).
        mim_layer: the fusion layer (1-based) whose image tokens feed the MIM decoder; -1 = last.
        loss_weights: weights of ``mim``, ``mlm``, ``itm`` (released: all 1).
        joint_pass: one pass with both modalities masked instead of three.
        mlm_replace, mlm_random: BERT's 80 % / 10 % corruption of hidden tokens.
        norm_pix_loss: MIM targets are per-patch normalised pixels (released: True).
    """

    encoder: ViTEncoder

    def __init__(
        self,
        vocab_size: int,
        pad_token_id: int,
        mask_token_id: int,
        masker: Masker | None = None,
        text_masker: Masker | None = None,
        image: dict | ImageEncoderConfig | None = None,
        text: dict | TextEncoderConfig | None = None,
        fusion: dict | FusionConfig | None = None,
        decoder: dict | DecoderConfig | None = None,
        mim_layer: int = 3,
        loss_weights: dict[str, float] | None = None,
        joint_pass: bool = False,
        mlm_replace: float = 0.8,
        mlm_random: float = 0.1,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        image = _config(ImageEncoderConfig, image, "image")
        text = _config(TextEncoderConfig, text, "text")
        fusion = _config(FusionConfig, fusion, "fusion")
        decoder = _config(DecoderConfig, decoder, "decoder")
        if image.size not in VIT_SIZES:
            raise ValueError(f"unknown ViT size {image.size!r}; choose one of {list(VIT_SIZES)}")
        mim_layer = fusion.depth if mim_layer == -1 else mim_layer
        if not 1 <= mim_layer <= fusion.depth:
            raise ValueError(f"mim_layer must be in [1, {fusion.depth}] or -1, got {mim_layer}")
        weights = {"mim": 1.0, "mlm": 1.0, "itm": 1.0, **dict(loss_weights or {})}
        if set(weights) != {"mim", "mlm", "itm"}:
            raise ValueError(f"loss_weights keys must be mim, mlm, itm; got {sorted(weights)}")

        self.masker = masker if masker is not None else RandomMasker(0.75)
        self.text_masker = text_masker if text_masker is not None else WholeWordMasker(0.15)
        self.vocab_size, self.pad_token_id, self.mask_token_id = (
            vocab_size,
            pad_token_id,
            mask_token_id,
        )
        self.mim_layer, self.joint_pass, self.norm_pix_loss = mim_layer, joint_pass, norm_pix_loss
        self.loss_weights = {k: float(v) for k, v in weights.items()}
        self.mlm_replace, self.mlm_random = mlm_replace, mlm_random
        self.patch_size = image.patch_size

        d, n, h = VIT_SIZES[image.size]
        self.encoder = ViTEncoder(  # "encoder": the image encoder, as for every method
            image.img_size,
            image.patch_size,
            image.in_chans,
            image.embed_dim or d,
            image.depth or n,
            image.num_heads or h,
            image.mlp_ratio,
            image.drop_path_rate,
        )
        if image.pretrained:
            load_image_weights(self.encoder, image.pretrained, image.allow_partial)
        self.grid_size = self.encoder.grid_size
        self.text_encoder = build_text_encoder(text, vocab_size, pad_token_id)
        text_dim: int = cast(Any, self.text_encoder).config.hidden_size  # a transformers model

        dim = fusion.dim
        self.image_proj = nn.Linear(self.encoder.embed_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.modality_embed = nn.Embedding(2, dim)  # 0 = text, 1 = image
        self.fusion = CoAttentionFusion(
            dim, fusion.depth, fusion.num_heads, fusion.mlp_ratio, fusion.dropout
        )
        self.image_pooler, self.text_pooler = Pooler(dim), Pooler(dim)
        self.mlm_head = MLMHead(dim, vocab_size)
        self.itm_head = nn.Linear(2 * dim, 2)
        for module in (
            self.image_proj,
            self.text_proj,
            self.modality_embed,
            self.fusion,
            self.image_pooler,
            self.text_pooler,
            self.mlm_head,
            self.itm_head,
        ):
            module.apply(bert_init)
        patch_dim = image.patch_size**2 * image.in_chans
        self.mim_decoder = MAEDecoder(
            self.grid_size,
            dim,
            patch_dim,
            decoder.embed_dim,
            decoder.depth,
            decoder.num_heads,
            image.mlp_ratio,
        )

    def no_weight_decay(self) -> set[str]:
        enc = {f"encoder.{k}" for k in self.encoder.no_weight_decay()}
        return enc | {f"mim_decoder.{k}" for k in self.mim_decoder.no_weight_decay()}

    # -- encoders and fusion ---------------------------------------------------------------
    def image_layout(self, batch_size: int, device: torch.device) -> TokenLayout:
        return TokenLayout.grid(batch_size, *self.grid_size, device=device)

    @staticmethod
    def text_layout(batch: dict) -> TokenLayout:
        """Caption tokens as a sequence; words by the tokenizer's word ids, specials invalid."""
        word_ids = batch["word_ids"]
        b, n = word_ids.shape
        positions = torch.arange(n, device=word_ids.device, dtype=torch.float32).expand(b, n)[
            ..., None
        ]
        valid = batch["attention_mask"].bool() & (word_ids >= 0)
        return TokenLayout("sequence", positions, valid, groups=word_ids)

    def encode_image(
        self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, 1 + V, D)``: ViT tokens (CLS first) projected, plus the image-type embedding."""
        x = self.image_proj(self.encoder(imgs, ids_keep))
        return x + self.modality_embed.weight[1]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, D)``: every text-encoder layer, projected, plus the text-type embedding."""
        hidden = self.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        return self.text_proj(hidden) + self.modality_embed.weight[0]

    def infer(
        self,
        imgs: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        num_layers: int | None = None,
    ) -> Fused:
        image = self.encode_image(imgs, ids_keep)
        text = self.encode_text(input_ids, attention_mask)
        return self.fuse(image, text, attention_mask, num_layers)

    def fuse(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        attention_mask: torch.Tensor,
        num_layers: int | None = None,
    ) -> Fused:
        """Co-attention over encoded tokens (``encode_image`` / ``encode_text`` outputs)."""
        image_out, text_out = self.fusion(
            image, text, text_pad=~attention_mask.bool(), num_layers=num_layers
        )
        return Fused(image_out, text_out)

    def itm_logits(self, fused: Fused) -> torch.Tensor:
        """``(B, 2)`` logits, class 1 = the image matches the text."""
        pooled = torch.cat(
            [self.text_pooler(fused.text[-1]), self.image_pooler(fused.image[-1])], dim=-1
        )
        return self.itm_head(pooled)

    # -- objective pieces ------------------------------------------------------------------
    def mim_target(self, imgs: torch.Tensor) -> torch.Tensor:
        return pixel_target(imgs, self.patch_size, self.norm_pix_loss)

    def mask_text(self, batch: dict, generator: torch.Generator | None):
        """(corrupted ids, labels with -100 where not scored, hidden mask)."""
        hidden = self.text_masker(self.text_layout(batch), generator)
        ids, labels = mlm_corrupt(
            batch["input_ids"],
            hidden,
            self.mask_token_id,
            self.vocab_size,
            generator,
            self.mlm_replace,
            self.mlm_random,
        )
        return ids, labels, hidden

    def mismatch(self, imgs: torch.Tensor, generator: torch.Generator | None):
        """Swap in another image of the batch for exactly ``B - B // 2`` random samples.

        Returns (images, ``(B,)`` long labels: 1 = matched). M3AE draws a random "false
        image" from the dataset; another sample of the batch is the same distribution.
        """
        b = imgs.shape[0]
        if b < 2:
            raise ValueError(
                "image-text matching needs at least 2 samples per batch to draw mismatches"
            )
        dev = imgs.device
        labels = torch.cat(
            [
                torch.ones(b // 2, dtype=torch.long, device=dev),
                torch.zeros(b - b // 2, dtype=torch.long, device=dev),
            ]
        )
        labels = labels[torch.randperm(b, generator=generator, device=dev)]
        shift = torch.randint(
            1, b, (b,), generator=generator, device=dev
        )  # never 0: another sample
        source = torch.where(
            labels.bool(), torch.arange(b, device=dev), (torch.arange(b, device=dev) + shift) % b
        )
        return imgs[source], labels

    def mlm_loss(self, fused: Fused, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scored = labels != IGNORE
        logits = self.mlm_head(fused.text[-1][scored])  # only scored tokens reach the vocab layer
        target = labels[scored]
        if target.numel() == 0:
            raise ValueError(
                "MLM: no token of the batch was hidden (captions too short for the ratio?)"
            )
        return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()

    # -- the step --------------------------------------------------------------------------
    @staticmethod
    def trim_padding(batch: dict) -> dict:
        """Drop the padding columns that every caption of the batch has (pure speed: padded
        tokens are never attended to, scored or pooled)."""
        length = int(batch["attention_mask"].sum(1).max())
        if length == batch["attention_mask"].shape[1]:
            return batch
        text_keys = ("input_ids", "attention_mask", "word_ids")
        return {**batch, **{k: batch[k][:, :length] for k in text_keys}}

    def forward(
        self, batch: dict, generator: torch.Generator | None = None
    ) -> MaskedModelingOutput:
        batch = self.trim_padding(batch)
        imgs, ids, attn = batch["image"], batch["input_ids"], batch["attention_mask"]
        image_mask = self.masker(self.image_layout(imgs.shape[0], imgs.device), generator)
        idx = mask_indices(image_mask)
        text_ids, labels, _ = self.mask_text(batch, generator)
        if self.joint_pass:
            pair_imgs, itm_labels = self.mismatch(imgs, generator)
            target = self.mim_target(pair_imgs)
            fused = self.infer(pair_imgs, text_ids, attn, idx.ids_keep)
            matched = itm_labels.bool()
            labels = labels.masked_fill(~matched[:, None], IGNORE)
            mim_mask = image_mask & matched[:, None]
            pred = self.mim_decoder(fused.image[self.mim_layer - 1], idx.ids_restore)
            itm_logits = self.itm_logits(fused)
            mlm_fused = fused
        else:
            target = self.mim_target(imgs)
            fused = self.infer(
                imgs, ids, attn, idx.ids_keep, num_layers=self.mim_layer
            )  # text intact
            pred = self.mim_decoder(fused.image[self.mim_layer - 1], idx.ids_restore)
            mim_mask = image_mask
            mlm_fused = self.infer(imgs, text_ids, attn)  # image intact
            pair_imgs, itm_labels = self.mismatch(imgs, generator)
            itm_logits = self.itm_logits(self.infer(pair_imgs, ids, attn))
        mim = masked_mse(pred, target, mim_mask)
        mlm, mlm_acc = self.mlm_loss(mlm_fused, labels)
        itm = F.cross_entropy(itm_logits, itm_labels)
        itm_acc = (itm_logits.argmax(-1) == itm_labels).float().mean()
        parts = {"mim": mim, "mlm": mlm, "itm": itm}
        loss = cast(torch.Tensor, sum(self.loss_weights[k] * v for k, v in parts.items()))
        return MaskedModelingOutput(
            loss=loss,
            parts=parts,
            pred=pred,
            mask=image_mask,
            metrics={"mlm_acc": mlm_acc.detach(), "itm_acc": itm_acc.detach()},
            extras={"mim_images": pair_imgs if self.joint_pass else imgs},
        )

    # -- evaluation helpers ----------------------------------------------------------------
    @torch.no_grad()
    def mlm_logits(
        self,
        imgs: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """Vocabulary logits at ``positions`` (B, L) bool of already-corrupted ``input_ids``."""
        fused = self.infer(imgs, input_ids, attention_mask)
        return self.mlm_head(fused.text[-1][positions])

    @torch.no_grad()
    def match_scores(
        self, image: torch.Tensor, text: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """``(B,)`` log-probability that encoded image ``i`` and encoded text ``i`` match (ITM).

        Takes ``encode_image`` / ``encode_text`` outputs, so retrieval encodes each item once
        and runs only the fusion per pair.
        """
        return self.itm_logits(self.fuse(image, text, attention_mask)).log_softmax(-1)[:, 1]

    def panel_images(self, batch: dict, out: MaskedModelingOutput) -> torch.Tensor:
        return out.extras["mim_images"]  # joint pass: the swapped-in pictures
