import torch

from maskfm.nn.fusion import CoAttentionFusion


def test_fusion_layers_read_the_previous_outputs_of_both_streams():
    torch.manual_seed(0)
    fusion = CoAttentionFusion(dim=16, depth=3, num_heads=2, dropout=0.0).eval()
    image, text = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    image_out, text_out = fusion(image, text)
    assert len(image_out) == len(text_out) == 3
    assert image_out[-1].shape == (2, 5, 16) and text_out[-1].shape == (2, 7, 16)
    x, y = image, text
    for i in range(3):  # lockstep: both streams of layer i read layer i - 1
        x, y = fusion.image_layers[i](x, y), fusion.text_layers[i](y, x)
        assert torch.allclose(x, image_out[i], atol=1e-6) and torch.allclose(
            y, text_out[i], atol=1e-6
        )


def test_padded_text_tokens_do_not_change_the_image_stream():
    torch.manual_seed(0)
    fusion = CoAttentionFusion(dim=16, depth=2, num_heads=2, dropout=0.0).eval()
    image, text = torch.randn(1, 4, 16), torch.randn(1, 6, 16)
    pad = torch.tensor([[False, False, False, True, True, True]])
    a, _ = fusion(image, text, text_pad=pad)
    text2 = text.clone()
    text2[:, 3:] = torch.randn(1, 3, 16)
    b, t = fusion(image, text2, text_pad=pad)
    assert torch.allclose(a[-1], b[-1], atol=1e-6)
    assert torch.isfinite(t[-1]).all()
