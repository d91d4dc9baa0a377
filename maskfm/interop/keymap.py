"""Renaming state-dict keys between layouts with one table per layout.

A table is a tuple of ``(theirs, ours)`` pairs; an entry ending in ``.`` renames a prefix,
any other entry one exact key (so ``mask_token`` does not also catch ``mask_token1``). The
first matching entry wins; keys no entry matches keep their name (and then show up as
unexpected keys in the load report). The same table read backwards exports.
"""

from __future__ import annotations

import torch

KeyTable = tuple[tuple[str, str], ...]


def rename_key(key: str, table: KeyTable) -> str | None:
    """``key`` renamed by the first matching ``(old, new)`` entry, None if none matches."""
    for old, new in table:
        if old.endswith("."):
            if key.startswith(old):
                return new + key[len(old) :]
        elif key == old:
            return new
    return None


def rename(state_dict: dict[str, torch.Tensor], table: KeyTable) -> dict[str, torch.Tensor]:
    """Their layout -> ours; unmatched keys keep their names."""
    return {(rename_key(k, table) or k): v for k, v in state_dict.items()}


def inverse(table: KeyTable) -> KeyTable:
    return tuple((new, old) for old, new in table)


def rename_all(
    state_dict: dict[str, torch.Tensor], table: KeyTable, what: str
) -> dict[str, torch.Tensor]:
    """Ours -> their layout for an export: every key must be matched (a key the layout has
    no name for would be silently lost)."""
    out, unnamed = {}, []
    for key, value in state_dict.items():
        new = rename_key(key, table)
        if new is None:
            unnamed.append(key)
        else:
            out[new] = value.detach().cpu().contiguous()
    if unnamed:
        raise ValueError(f"{what} has no name for {len(unnamed)} tensors: {', '.join(unnamed[:8])}")
    return out


def strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``nn.DataParallel``'s ``module.`` prefix."""
    return {k.removeprefix("module."): v for k, v in state_dict.items()}
