"""Evaluations of an image-text model (M3AE): does it read the picture?

* :func:`mlm_probe`: hide the words of a caption that only the picture can reveal (colours,
  shapes, counts of the generated captions) and predict them with the MLM head, once with
  the true picture and once with a blank one (every pixel at the dataset mean, i.e. zeros
  after normalisation). Text-only cues (grammar, an "an" before "orange", a plural after
  "two") help both equally; the gap between the two is what the model takes from the image.
* :func:`retrieval`: image-to-text and text-to-image Recall@K over held-out pairs, every
  pair scored by the ITM head (O(N^2) fusion passes; each image and text is encoded once).

:class:`MLMProbe` (``eval=mlm_probe``) and :class:`Retrieval` (``eval=retrieval``) run them
on a datamodule's held-out split for ``maskfm.evaluate``.

Both take ``model`` with M3AE's ``encode_image``, ``encode_text``, ``mlm_logits`` and
``match_scores``, and loaders of caption batches (:mod:`maskfm.data.captions`).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from maskfm.batch import to_device
from maskfm.eval.protocol import Protocol


def probe_variants(
    batch: dict, kinds: Sequence[str], mode: str = "each"
) -> list[tuple[int, torch.Tensor, list[tuple[str, torch.Tensor]]]]:
    """Which tokens to hide, per probe: ``(sample index, (L,) bool hidden, [(kind, (L,) bool word)])``.

    ``mode="each"``: one probe per grounded word of a wanted kind, the rest of the caption
    visible. ``mode="all"``: one probe per caption with all such words hidden at once.
    """
    if mode not in ("each", "all"):
        raise ValueError(f"eval.mode must be 'each' or 'all', got {mode!r}")
    variants = []
    for i, spans in enumerate(batch["spans"]):
        words = []
        for k, (_, _, kind) in enumerate(spans):
            tokens = batch["span_ids"][i] == k
            if kind in kinds and tokens.any():  # a word cut off by truncation has no tokens
                words.append((kind, tokens))
        if not words:
            continue
        if mode == "each":
            variants.extend((i, tokens, [(kind, tokens)]) for kind, tokens in words)
        else:
            variants.append((i, torch.stack([t for _, t in words]).any(0), words))
    return variants


@torch.no_grad()
def mlm_probe(
    model,
    loader: Iterable[dict],
    mask_token_id: int,
    kinds: Sequence[str] = ("colour", "shape", "count"),
    mode: str = "each",
    max_samples: int | None = None,
    device: torch.device | str = "cpu",
    chunk: int = 256,
) -> dict:
    """Masked-word accuracy with the true picture vs a blank picture (in %).

    A word counts as right when every one of its tokens is predicted exactly. Returns
    overall and per-kind word accuracies, token accuracy, and their ``gap`` (true - blank).
    """
    device = torch.device(device)
    right = {"true": defaultdict(int), "blank": defaultdict(int)}
    tokens_right = {"true": 0, "blank": 0}
    words_total: dict[str, int] = defaultdict(int)
    tokens_total = samples = 0
    for batch in loader:
        if max_samples is not None and samples >= max_samples:
            break
        batch = to_device(batch, device)
        keep = (
            len(batch["spans"])
            if max_samples is None
            else min(len(batch["spans"]), max_samples - samples)
        )
        samples += keep
        variants = [v for v in probe_variants(batch, kinds, mode) if v[0] < keep]
        for start in range(0, len(variants), chunk):
            part = variants[start : start + chunk]
            rows = torch.tensor([i for i, _, _ in part], device=device)
            hidden = torch.stack([h for _, h, _ in part])
            ids = batch["input_ids"][rows].masked_fill(hidden, mask_token_id)
            attn = batch["attention_mask"][rows]
            imgs = batch["image"][rows]
            target = batch["input_ids"][rows]
            for name, pictures in (("true", imgs), ("blank", torch.zeros_like(imgs))):
                logits = model.mlm_logits(pictures, ids, attn, hidden)
                correct = torch.zeros_like(hidden)
                correct[hidden] = logits.argmax(-1) == target[hidden]
                tokens_right[name] += int(correct[hidden].sum())
                for v, (_, _, words) in enumerate(part):
                    for kind, tokens in words:
                        ok = bool(correct[v][tokens].all())
                        right[name][kind] += ok
                        right[name]["all"] += ok
            tokens_total += int(hidden.sum())
            for _, _, words in part:
                for kind, _ in words:
                    words_total[kind] += 1
                    words_total["all"] += 1
    if words_total["all"] == 0:
        raise ValueError(
            f"mlm_probe found no grounded word of kinds {list(kinds)}: the data must mark them "
            "(the generated captions do; real captions have no grounded spans)"
        )
    pct = lambda a, b: 100.0 * a / b  # noqa: E731
    result: dict = {
        "mode": mode,
        "kinds": list(kinds),
        "num_samples": samples,
        "num_words": words_total["all"],
        "num_tokens": tokens_total,
    }
    for name in ("true", "blank"):
        result[f"{name}_image"] = {
            "word_accuracy": pct(right[name]["all"], words_total["all"]),
            "token_accuracy": pct(tokens_right[name], tokens_total),
            **{
                f"{k}_accuracy": pct(right[name][k], words_total[k])
                for k in kinds
                if words_total[k]
            },
        }
    result["gap"] = result["true_image"]["word_accuracy"] - result["blank_image"]["word_accuracy"]
    return result


def _fingerprint(x: torch.Tensor) -> str:
    return hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def recall_at_k(
    scores: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int]
) -> dict[str, float]:
    """Recall@K (%) of each row's ranking: a hit when a relevant column is in the top K.

    ``scores``, ``relevant``: ``(Q, N)``; ties are broken by column order.
    """
    order = scores.argsort(dim=1, descending=True, stable=True)
    hits = relevant.gather(1, order)  # (Q, N) relevance in ranked order
    first = torch.where(
        hits.any(1),
        hits.float().argmax(1),
        torch.full_like(hits[:, 0], hits.shape[1], dtype=torch.long),
    )
    return {f"R@{k}": float((first < k).float().mean() * 100) for k in ks}


@torch.no_grad()
def retrieval(
    model,
    loader: Iterable[dict],
    num_pairs: int = 100,
    ks: Sequence[int] = (1, 5, 10),
    device: torch.device | str = "cpu",
    chunk: int = 256,
) -> dict:
    """Image->text and text->image Recall@K of the first ``num_pairs`` held-out pairs.

    Pair (i, j) is scored by the ITM head's log-probability of "matched". A text counts as
    relevant to an image when it is the image's own caption, or the same caption text, or
    the caption of an identical image (real datasets have several captions per image).
    """
    device = torch.device(device)
    images, texts, masks, captions, fingerprints = [], [], [], [], []
    for batch in loader:
        if len(captions) >= num_pairs:
            break
        take = min(num_pairs - len(captions), len(batch["caption"]))
        batch = to_device(batch, device)
        images.append(model.encode_image(batch["image"][:take]))
        texts.append(model.encode_text(batch["input_ids"][:take], batch["attention_mask"][:take]))
        masks.append(batch["attention_mask"][:take])
        captions.extend(batch["caption"][:take])
        fingerprints.extend(_fingerprint(x) for x in batch["image"][:take])
    n = len(captions)
    if n < 2:
        raise ValueError(f"retrieval needs at least 2 held-out pairs, got {n}")
    image, text, mask = torch.cat(images), torch.cat(texts), torch.cat(masks)
    scores = torch.empty(n, n, device=device)  # [image, text]
    pairs = torch.cartesian_prod(torch.arange(n), torch.arange(n)).to(device)
    for start in range(0, n * n, chunk):
        ii, tt = pairs[start : start + chunk].unbind(1)
        scores[ii, tt] = model.match_scores(image[ii], text[tt], mask[tt])
    same_caption = torch.tensor([[a == b for b in captions] for a in captions], device=device)
    same_image = torch.tensor([[a == b for b in fingerprints] for a in fingerprints], device=device)
    relevant = same_caption | same_image  # [image, text]
    ks = [k for k in ks if k <= n]
    return {
        "num_pairs": n,
        "image_to_text": recall_at_k(scores, relevant, ks),
        "text_to_image": recall_at_k(scores.T, relevant.T, ks),
        "chance": {f"R@{k}": 100.0 * k / n for k in ks},
    }


def held_out_loader(datamodule):
    """The held-out (validation) loader, unshuffled, with every sample."""
    return datamodule.eval_dataloaders()[1]


@dataclass(kw_only=True)
class MLMProbe(Protocol):
    """``eval=mlm_probe``: masked image-grounded words, true picture vs blank picture."""

    kinds: list[str] = field(default_factory=lambda: ["colour", "shape", "count"])
    mode: str = "each"  # each: one grounded word hidden at a time | all: all at once
    num_samples: int | None = None  # None: the whole held-out split

    def __call__(self, model, device, datamodule) -> tuple[dict, str]:
        result = mlm_probe(
            model,
            held_out_loader(datamodule),
            datamodule.mask_token_id,
            kinds=list(self.kinds),
            mode=self.mode,
            max_samples=self.num_samples,
            device=device,
        )
        result = {"eval": "mlm_probe", **result}
        t, b = result["true_image"], result["blank_image"]
        per_kind = ", ".join(
            f"{k} {t[f'{k}_accuracy']:.1f} vs {b[f'{k}_accuracy']:.1f}"
            for k in result["kinds"]
            if f"{k}_accuracy" in t
        )
        summary = (
            f"masked grounded words ({result['num_words']} in {result['num_samples']} held-out captions): "
            f"true image {t['word_accuracy']:.2f} %, blank image {b['word_accuracy']:.2f} %, "
            f"gap {result['gap']:+.2f} points ({per_kind})"
        )
        return result, summary


@dataclass(kw_only=True)
class Retrieval(Protocol):
    """``eval=retrieval``: image-text Recall@K over held-out pairs by the ITM head."""

    num_pairs: int = 100
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])

    def __call__(self, model, device, datamodule) -> tuple[dict, str]:
        result = retrieval(
            model,
            held_out_loader(datamodule),
            num_pairs=self.num_pairs,
            ks=list(self.ks),
            device=device,
        )
        result = {"eval": "retrieval", **result}
        fmt = lambda r: " ".join(f"{k} {v:.1f}" for k, v in r.items())  # noqa: E731
        summary = (
            f"retrieval over {result['num_pairs']} held-out pairs: image->text "
            f"{fmt(result['image_to_text'])}; text->image {fmt(result['text_to_image'])} "
            f"(chance {fmt(result['chance'])})"
        )
        return result, summary
