"""Channel pruning of a trained PaperUNet (``cryoet_monai.networks.prune``, ``configs/prune.json``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.networks.blocks import Convolution

from cryoet_monai.inference import InferenceError
from cryoet_monai.model_folder import pruned_start
from cryoet_monai.networks import PaperUNet
from cryoet_monai.networks.prune import channel_importance, prune_channels_into, saved_features

WIDE = (8, 16, 32, 64)
NARROW = (4, 8, 16, 32)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _silence_half(network: PaperUNet, generator: torch.Generator) -> None:
    """Randomise every layer, then silence a random half of every convolution block's output
    channels (norm scale and shift 0, or filters and bias 0 without a norm: ReLU(0) = 0), so the
    network computes the same function without them."""
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm3d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
        for module in network.modules():
            if not isinstance(module, Convolution):
                continue
            n = module.conv.out_channels
            dead = torch.randperm(n, generator=generator)[: n // 2]
            norm = getattr(module.adn, "N", None) if hasattr(module, "adn") else None
            if norm is not None:
                norm.weight[dead] = 0.0
                norm.bias[dead] = 0.0
            else:
                module.conv.weight[dead] = 0.0
                module.conv.bias[dead] = 0.0


@pytest.mark.parametrize("dims, shape", [(2, (2, 3, 32, 32)), (3, (1, 1, 8, 16, 16))])
def test_pruning_silent_channels_keeps_the_function(dims, shape):
    """Removing exactly the channels that contribute nothing leaves the network's output unchanged:
    every channel set (encoder, up-convolution, the [skip, up] concatenation, final conv) is wired."""
    g = torch.Generator().manual_seed(dims)
    torch.manual_seed(dims)
    wide = PaperUNet(dims, shape[1], 6, features=WIDE, dropout=0.0).eval()
    _silence_half(wide, g)
    narrow = prune_channels_into(wide, PaperUNet(dims, shape[1], 6, features=NARROW, dropout=0.0)).eval()
    x = torch.randn(shape, generator=g)
    with torch.no_grad():
        expected, got = wide(x), narrow(x)
    assert expected.abs().max() > 0.1  # a function worth comparing
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # and the shrunk network is a different function from a fresh one of that width
    with torch.no_grad():
        assert (
            PaperUNet(dims, shape[1], 6, features=NARROW, dropout=0.0).eval()(x) - expected
        ).abs().max() > 1e-2


def test_pruning_to_the_same_width_is_an_exact_copy_and_keeps_the_most_important():
    torch.manual_seed(0)
    source = PaperUNet(2, 1, 6, features=WIDE).eval()
    copy = prune_channels_into(source, PaperUNet(2, 1, 6, features=WIDE)).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value), key
    # the kept output channels of the first convolution are those of largest |gamma|
    block = source.encoder[0].conv_0
    with torch.no_grad():
        block.adn.N.weight.copy_(torch.tensor([0.1, -3.0, 0.2, 2.0, 0.05, 1.0, -0.3, 0.0]))
    assert torch.equal(channel_importance(block), block.adn.N.weight.abs())
    narrow = prune_channels_into(source, PaperUNet(2, 1, 6, features=NARROW))
    kept = torch.tensor([1, 3, 5, 6])
    assert torch.equal(narrow.encoder[0].conv_0.conv.weight, source.encoder[0].conv_0.conv.weight[kept])
    assert torch.equal(
        narrow.encoder[0].conv_0.adn.N.running_var, source.encoder[0].conv_0.adn.N.running_var[kept]
    )


def test_pruning_refuses_networks_that_do_not_fit():
    source = PaperUNet(2, 1, 6, features=NARROW)
    with pytest.raises(ValueError, match="must not exceed"):
        prune_channels_into(source, PaperUNet(2, 1, 6, features=WIDE))
    with pytest.raises(ValueError, match="depths differ"):
        prune_channels_into(
            PaperUNet(2, 1, 6, features=(8, 16, 32, 64, 128)), PaperUNet(2, 1, 6, features=NARROW)
        )
    with pytest.raises(ValueError, match=r"\['in_channels'\]"):
        prune_channels_into(PaperUNet(2, 5, 6, features=WIDE), PaperUNet(2, 1, 6, features=NARROW))
    with pytest.raises(ValueError, match="deconv"):
        prune_channels_into(
            PaperUNet(2, 1, 6, features=WIDE, upsample="deconv"),
            PaperUNet(2, 1, 6, features=NARROW, upsample="deconv"),
        )


def test_pruned_start_from_a_model_folder_on_disk(tmp_path):
    """``pruned_start`` reads the source widths from the checkpoint; bad checkpoints are one-line
    errors naming the file."""
    torch.manual_seed(1)
    source = PaperUNet(2, 1, 6, features=WIDE, dropout=0.0).eval()
    _silence_half(source, torch.Generator().manual_seed(5))
    (tmp_path / "models").mkdir()
    torch.save(
        {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()},
        tmp_path / "models" / "model.pt",
    )  # shipped weights are stored in half precision
    assert saved_features(torch.load(tmp_path / "models" / "model.pt"), len(WIDE)) == list(WIDE)
    network = pruned_start(PaperUNet(2, 1, 6, features=NARROW, dropout=0.0), tmp_path).eval()
    assert network.encoder[0].conv_0.conv.weight.dtype == torch.float32
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(network(x), source.half().float()(x), atol=2e-3, rtol=2e-3)

    with pytest.raises(InferenceError, match=r"model\.pt: cannot prune it to the configured network"):
        pruned_start(PaperUNet(2, 1, 6, features=(16, 32, 64, 128), dropout=0.0), tmp_path)
    with pytest.raises(InferenceError, match="not a 5-level U-Net checkpoint"):
        pruned_start(PaperUNet(2, 1, 6, features=(2, 2, 2, 2, 2)), tmp_path)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InferenceError, match=r"broken\.pt: cannot load the model checkpoint"):
        pruned_start(PaperUNet(2, 1, 6, features=NARROW), tmp_path / "broken.pt")
    with pytest.raises(InferenceError, match="checkpoint not found"):
        pruned_start(PaperUNet(2, 1, 6, features=NARROW), tmp_path / "missing.pt")


def test_prune_overlay_builds_the_pruned_network(tmp_path):
    """configs/prune.json, as the bundle runs it: the configured network starts from the pruned
    channels of ``prune_weights``."""
    from monai.bundle import ConfigParser

    torch.manual_seed(2)
    source = PaperUNet(2, 5, 6, features=(8, 16, 32, 64, 128), dropout=0.1)
    torch.save(source.state_dict(), tmp_path / "wide.pt")
    parser = ConfigParser()
    parser.read_config(
        [str(CONFIGS / n) for n in ("train.json", "transfer.json", "train_2p5d.json", "prune.json")]
    )
    overlay = json.loads((CONFIGS / "prune.json").read_text())
    assert parser["network_def"]["features"] == overlay["network_def#features"]
    parser["network_def"]["features"] = [4, 8, 16, 32, 64]
    parser["prune_weights"] = str(tmp_path / "wide.pt")
    parser["device"] = "$torch.device('cpu')"
    network = parser.get_parsed_content("network")
    expected = prune_channels_into(source, PaperUNet(2, 5, 6, features=(4, 8, 16, 32, 64), dropout=0.1))
    for key, value in expected.state_dict().items():
        assert torch.equal(network.state_dict()[key], value), key
