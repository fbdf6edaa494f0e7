"""PaperUNet: shapes, parameter count, determinism, training step, channels_last, bf16 autocast."""

from __future__ import annotations

import pytest
import torch

import cryoet_monai
from cryoet_monai.networks import InputSizeError, PaperUNet

TINY = (4, 8, 16, 32, 64)


def _paper_param_count(f: tuple[int, ...], in_ch: int = 1, out_ch: int = 6, k: int = 9) -> int:
    """Closed-form parameter count of the 2-D PaperUNet (conv weights + biases + BatchNorm affine)."""

    def double_conv(i: int, o: int) -> int:
        return (k * i * o + o) + (k * o * o + o) + 2 * (2 * o)

    encoder = double_conv(in_ch, f[0]) + sum(double_conv(f[i], f[i + 1]) for i in range(len(f) - 1))
    decoder = sum((k * f[i + 1] * f[i] + f[i]) + double_conv(2 * f[i], f[i]) for i in range(len(f) - 1))
    return encoder + decoder + f[0] * out_ch + out_ch


def test_exported_from_package():
    assert cryoet_monai.PaperUNet is PaperUNet


def test_full_paper_net_parameter_count():
    net = PaperUNet()
    n = sum(p.numel() for p in net.parameters())
    assert n == _paper_param_count((64, 128, 256, 512, 1024)) == 34_524_294
    assert net.size_divisible == 16
    # dropout on the 256- and 512-channel encoder outputs only
    drops = [type(m).__name__ for m in net.encoder_dropout]
    assert drops == ["Identity", "Identity", "Dropout2d", "Dropout2d", "Identity"]
    assert net.encoder_dropout[2].p == 0.5


def test_tiny_param_count_matches_formula():
    net = PaperUNet(features=TINY, in_channels=3, out_channels=4)
    assert sum(p.numel() for p in net.parameters()) == _paper_param_count(TINY, 3, 4)


@pytest.mark.parametrize(
    "dims, shape, drop_name",
    [(2, (2, 1, 32, 48), "Dropout2d"), (3, (2, 1, 16, 32, 16), "Dropout3d")],
)
def test_output_shapes_2d_3d(dims, shape, drop_name):
    torch.manual_seed(0)
    net = PaperUNet(spatial_dims=dims, features=TINY)
    out = net(torch.randn(shape))
    assert out.shape == (shape[0], 6, *shape[2:])
    assert type(net.encoder_dropout[3]).__name__ == drop_name
    mode = net.decoder[0].upsample[0].upsample_non_trainable.mode
    assert mode == ("bilinear" if dims == 2 else "trilinear")
    assert net.decoder[0].upsample[0].upsample_non_trainable.align_corners is True


def test_depth_and_size_divisible_configurable():
    net = PaperUNet(features=(4, 8, 16), dropout_levels=(1,))
    assert net.size_divisible == 4
    net.eval()
    assert net(torch.randn(1, 1, 12, 20)).shape == (1, 6, 12, 20)
    with pytest.raises(InputSizeError, match="multiples of 4"):
        net(torch.randn(1, 1, 14, 20))
    with pytest.raises(InputSizeError, match="input channel"):
        net(torch.randn(1, 2, 12, 20))
    with pytest.raises(ValueError, match="dropout_levels"):
        PaperUNet(features=(4, 8, 16), dropout_levels=(2, 3))
    with pytest.raises(ValueError, match="upsample"):
        PaperUNet(features=(4, 8, 16), dropout_levels=(), upsample="cubic")


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    torch.manual_seed(0)
    net = PaperUNet(features=TINY)
    x = torch.randn(2, 1, 32, 32)
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.equal(a, b)
    net.train()
    with torch.no_grad():
        c, d = net(x), net(x)
    assert not torch.allclose(c, d)  # Dropout2d(0.5) is active in training


def test_gradient_step_reduces_loss():
    torch.manual_seed(0)
    net = PaperUNet(features=TINY, dropout=0.0)
    x = torch.randn(2, 1, 32, 32)
    y = (x[:, 0] > 0.5).long() + (x[:, 0] > 1.5).long()  # a learnable 3-class target
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.9 * losses[0]


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    net = PaperUNet(features=TINY).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        cl = net_cl(x.to(memory_format=torch.channels_last))
    assert low.dtype == torch.bfloat16
    assert torch.allclose(cl, ref, atol=1e-5)
    # bf16 has ~3 significant digits: the argmax agrees almost everywhere
    agree = (low.float().argmax(1) == ref.argmax(1)).float().mean().item()
    assert agree > 0.9
    assert (low.float() - ref).abs().max().item() < 0.1 * ref.abs().max().item() + 0.05


def test_constructible_from_bundle_config():
    from monai.bundle import ConfigParser

    parser = ConfigParser(
        {"network_def": {"_target_": "cryoet_monai.PaperUNet", "spatial_dims": 3, "features": list(TINY)}}
    )
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, PaperUNet) and net.spatial_dims == 3 and net.features == TINY
