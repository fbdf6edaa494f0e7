"""Copy a trained checkpoint to the shipped ``models/model.pt``, in half precision (thin CLI).

    python scripts/ship_model.py runs/transfer_2p5d/models/model.pt

Floating-point tensors are stored as float16 (half the size: the shipped 2.5-D network is 16.5 MB
instead of 33 MB); ``load_state_dict`` casts them back to the network's float32 parameters.
Prints how many voxels of a synthetic tomogram keep their label against the float32 weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--to", type=Path, default=ROOT / "models" / "model.pt")
    args = p.parse_args()
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    tmp = args.to.with_name(f".{args.to.name}.tmp")
    torch.save(half, tmp)
    tmp.replace(args.to)

    from monai.bundle import ConfigParser

    from cryoet_monai.data.synthetic import generate_tomogram

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    nets = []
    for weights in (state, half):
        net = parser.get_parsed_content("network_def", instantiate=True, lazy=False)
        net.load_state_dict(weights)
        nets.append(net.eval())
    from cryoet_monai.transforms.intensity import RobustNormalizeIntensity

    image, _ = generate_tomogram((16, 256, 256), 10.0, 3)
    image = RobustNormalizeIntensity()(image)  # what the network sees at inference
    k = nets[0].in_channels
    x = torch.as_tensor(image[4 : 4 + k])[None]  # one stack of k slices (or one slice for a 2-D network)
    with torch.no_grad():
        a, b = (net(x).argmax(1) for net in nets)
    print(f"wrote {args.to} ({args.to.stat().st_size / 2**20:.1f} MiB); float16 vs float32 weights: "
          f"{(a == b).float().mean().item():.5f} of the labels agree")


if __name__ == "__main__":
    main()
