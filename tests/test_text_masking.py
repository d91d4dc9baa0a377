import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from maskfm.masking import TokenLayout, WholeWordMasker, mlm_corrupt, whole_word_mask

CORPUS = [
    "two red circles on the left and a blue square",
    "a yellow star in the centre next to three purple triangles",
    "an orange hexagon at the top right of the picture",
] * 20


def bpe_tokenizer():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=60, special_tokens=["<s>", "</s>", "<pad>", "<mask>", "<unk>"]
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        mask_token="<mask>",
        unk_token="<unk>",
    )


def wordpiece_tokenizer():
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        CORPUS,
        trainers.WordPieceTrainer(
            vocab_size=60, special_tokens=["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"]
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        unk_token="[UNK]",
    )


def encode(tokenizer, texts, length=24):
    enc = tokenizer(
        texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    )
    word_ids = torch.tensor(
        [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(texts))]
    )
    return enc["input_ids"], word_ids


@pytest.mark.parametrize("make", [bpe_tokenizer, wordpiece_tokenizer])
def test_whole_words_are_hidden_together_for_bpe_and_wordpiece(make):
    tokenizer = make()
    ids, word_ids = encode(tokenizer, CORPUS[:3])
    # the small vocabularies split words into several sub-tokens
    assert any((word_ids[0] == w).sum() > 1 for w in range(word_ids[0].max() + 1))
    valid = word_ids >= 0
    for seed in range(20):
        hidden = WholeWordMasker(0.3)(
            TokenLayout.sequence(valid, word_ids), torch.Generator().manual_seed(seed)
        )
        assert not (hidden & ~valid).any()  # specials and padding never hidden
        for b in range(3):
            for w in word_ids[b][hidden[b]].unique():
                assert hidden[b][word_ids[b] == w].all()  # every sub-token of a chosen word
            assert hidden[b].sum() <= round(0.3 * int(valid[b].sum()))


def test_budget_is_filled_when_words_fit():
    word_ids = torch.arange(20).view(1, 20)  # one token per word
    hidden = whole_word_mask(
        word_ids, torch.ones(1, 20, dtype=torch.bool), 0.15, torch.Generator().manual_seed(0)
    )
    assert int(hidden.sum()) == 3


def test_80_10_10_corruption_statistics():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (200, 64), generator=g)
    mask = torch.rand(200, 64, generator=g) < 0.5
    corrupted, labels = mlm_corrupt(ids, mask, mask_token_id=3, vocab_size=1000, generator=g)
    assert torch.equal(labels[mask], ids[mask]) and (labels[~mask] == -100).all()
    assert torch.equal(corrupted[~mask], ids[~mask])
    n = mask.sum().item()
    to_mask = (corrupted[mask] == 3).sum().item() / n
    unchanged = (corrupted[mask] == ids[mask]).sum().item() / n
    assert to_mask == pytest.approx(0.8, abs=0.02)
    assert unchanged == pytest.approx(0.1 + 0.1 / 1000, abs=0.02)
    assert 1 - to_mask - unchanged == pytest.approx(0.1, abs=0.02)
