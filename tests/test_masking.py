import pytest
import torch

from maskfm.masking import (
    BlockMasker,
    RandomMasker,
    TokenLayout,
    gather_tokens,
    mask_indices,
    num_hidden,
    restore_order,
    scatter_tokens,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "ratio,n,expected", [(0.75, 196, 147), (0.6, 64, 38), (0.5, 7, 4), (0.0, 10, 0), (0.9, 10, 9)]
)
def test_random_masker_hides_exact_count(ratio, n, expected):
    layout = TokenLayout.grid(5, 1, n)
    mask = RandomMasker(ratio)(layout, gen())
    assert mask.dtype == torch.bool and mask.shape == (5, n)
    assert mask.sum(dim=1).tolist() == [expected] * 5
    assert int(num_hidden(torch.tensor([n]), ratio)) == expected


def test_masks_reproducible_with_seed_and_differ_between_samples():
    layout = TokenLayout.grid(4, 8, 8)
    m1 = RandomMasker(0.75)(layout, gen(7))
    m2 = RandomMasker(0.75)(layout, gen(7))
    m3 = RandomMasker(0.75)(layout, gen(8))
    assert torch.equal(m1, m2)
    assert not torch.equal(m1, m3)
    assert not torch.equal(m1[0], m1[1])  # one draw per sample, not per batch


def test_random_masker_is_uniform():
    layout = TokenLayout.grid(4000, 1, 10)
    freq = RandomMasker(0.3)(layout, gen()).float().mean(dim=0)
    assert torch.allclose(freq, torch.full((10,), 0.3), atol=0.03)


def test_padding_is_never_hidden_and_counts_follow_valid_tokens():
    valid = torch.tensor([[1] * 10, [1] * 6 + [0] * 4]).bool()
    layout = TokenLayout.sequence(valid)
    mask = RandomMasker(0.5)(layout, gen())
    assert mask.sum(dim=1).tolist() == [5, 3]
    assert not (mask & ~valid).any()


def test_block_masker_on_grid_is_one_contiguous_rectangle():
    layout = TokenLayout.grid(16, 14, 14)
    mask = BlockMasker(0.25, num_blocks=1, max_aspect=1.0)(layout, gen(3))
    assert mask.sum(dim=1).tolist() == [49] * 16
    for m in mask.view(16, 14, 14):
        rows = m.any(dim=1).nonzero().flatten()
        cols = m.any(dim=0).nonzero().flatten()
        # contiguous span of rows/cols, and the block nearly fills its bounding box
        assert rows.max() - rows.min() + 1 == len(rows)
        assert cols.max() - cols.min() + 1 == len(cols)
        assert m.sum() >= 0.6 * len(rows) * len(cols)


def test_block_masker_on_points_hides_nearest_to_a_centre():
    torch.manual_seed(0)
    centers = torch.randn(3, 64, 3)
    mask = BlockMasker(0.4)(TokenLayout.points(centers), gen(1))
    assert mask.sum(dim=1).tolist() == [26] * 3
    for b in range(3):
        hidden, visible = centers[b][mask[b]], centers[b][~mask[b]]
        # some hidden token is the centre: every hidden token is closer to it than any visible one
        d = torch.cdist(hidden, centers[b])
        found = False
        for i in range(len(hidden)):
            dh = torch.cdist(hidden[i : i + 1], hidden).max()
            dv = torch.cdist(hidden[i : i + 1], visible).min()
            found |= bool(dh <= dv)
        assert found, d.shape


def test_block_masker_refuses_sequences():
    layout = TokenLayout.sequence(torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="BlockMasker cannot mask a 'sequence' layout"):
        BlockMasker(0.5)(layout, gen())


def test_bad_ratio_and_bad_layout_are_rejected():
    with pytest.raises(ValueError, match="mask ratio must be in"):
        RandomMasker(1.5)
    with pytest.raises(ValueError, match="valid must be a bool tensor"):
        TokenLayout("points3d", torch.zeros(2, 4, 3), torch.ones(2, 5, dtype=torch.bool))


def test_gather_scatter_restore_round_trip():
    b, n, c = 3, 12, 5
    x = torch.randn(b, n, c)
    mask = RandomMasker(0.75)(TokenLayout.grid(b, 3, 4), gen())
    idx = mask_indices(mask)
    assert idx.ids_keep.shape == (b, 3) and idx.ids_masked.shape == (b, 9)
    visible = gather_tokens(x, idx.ids_keep)
    hidden = gather_tokens(x, idx.ids_masked)
    assert torch.equal(restore_order(visible, hidden, idx.ids_restore), x)
    # visible tokens keep their original order
    assert (idx.ids_keep.diff(dim=1) > 0).all()
    assert torch.equal(
        ~mask, scatter_tokens(torch.ones(b, 3, dtype=torch.bool), idx.ids_keep, n, False)
    )
    back = scatter_tokens(hidden, idx.ids_masked, n)
    assert torch.equal(back[mask], x[mask]) and (back[~mask] == 0).all()


def test_mask_indices_rejects_ragged_counts():
    mask = torch.tensor([[True, False, False], [True, True, False]])
    with pytest.raises(ValueError, match=r"hidden counts \[1, 2\]"):
        mask_indices(mask)


@pytest.mark.parametrize("masker", [RandomMasker, BlockMasker])
def test_a_ratio_that_hides_everything_is_refused(masker):
    with pytest.raises(
        ValueError,
        match=r"masking.ratio=1.0: .* would hide every token and the encoder would see nothing",
    ):
        masker(1.0)
    layout = TokenLayout.grid(2, 2, 2)  # 4 tokens: round(0.9 x 4) = 4, all of them
    with pytest.raises(
        ValueError, match=r"masking.ratio=0.9: round\(ratio x 4 tokens\) hides every token"
    ):
        masker(0.9)(layout, gen())
    assert masker(0.6)(layout, gen()).sum(1).tolist() == [2, 2]


def test_full_masks_stay_allowed_where_they_mean_something():
    from maskfm.masking import RadialMasker, WholeWordMasker

    with pytest.raises(ValueError, match="masking.ratio=1.0"):
        RadialMasker(1.0)
    valid = torch.ones(2, 5, dtype=torch.bool)
    assert WholeWordMasker(1.0)(
        TokenLayout.sequence(valid), gen()
    ).all()  # MLM: the picture is still seen
