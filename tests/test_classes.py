"""The class registry: one place for every class fact; a seventh class needs nothing else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryoet_monai import CLASS_NAMES, CLASSES, ClassInfo, ClassRegistry
from cryoet_monai.evaluation.figures import CLASS_COLORS
from cryoet_monai.evaluation.report import THIN_CLASSES
from cryoet_monai.losses import PAPER_CLASS_WEIGHTS

REPO = Path(__file__).resolve().parents[1]


def test_derived_constants_come_from_the_registry() -> None:
    assert CLASS_NAMES == CLASSES.names == (
        "background", "microtubule", "ribosome", "double_membrane", "single_membrane", "carbon_edge",
    )  # fmt: skip
    assert CLASS_COLORS == CLASSES.colors and len(set(CLASS_COLORS)) == len(CLASSES)
    assert THIN_CLASSES == (1, 3, 4)
    assert PAPER_CLASS_WEIGHTS == (1.0, 2000.0, 3000.0, 2000.0, 2000.0, 3000.0)  # the seed paper's
    assert CLASSES.ratios({"ribosome": 1, "double_membrane": 1, "single_membrane": 2}) == [1, 2, 1, 1, 2, 1]
    assert CLASSES.per_class({"ribosome": 0.5}, 1.0) == [1, 1, 0.5, 1, 1, 1]
    with pytest.raises(ValueError, match="unknown class"):
        CLASSES.per_class({"ribosomes": 0.5}, 1.0)
    with pytest.raises(ValueError, match="one per class"):
        CLASSES.per_class([1.0, 2.0], 1.0)
    assert CLASSES.label_of("cristae") == CLASSES.value("double_membrane") == 3
    assert CLASSES.label_of("actin") == 0  # unclaimed objects are background


def test_registry_rejects_inconsistent_entries() -> None:
    with pytest.raises(ValueError, match="unique"):
        ClassRegistry([ClassInfo("a", (0, 0, 0)), ClassInfo("a", (1, 1, 1))])
    with pytest.raises(ValueError, match="one class at most"):
        ClassRegistry([ClassInfo("a", (0, 0, 0), objects=("gold",)), ClassInfo("b", (1, 1, 1), objects=("gold",))])  # noqa: E501
    with pytest.raises(ValueError, match="unknown generator objects"):
        ClassRegistry([ClassInfo("a", (0, 0, 0), objects=("spaceship",))])


def test_metadata_channel_def_matches_the_registry() -> None:
    meta = json.loads((REPO / "configs" / "metadata.json").read_text())
    outputs = meta["network_data_format"]["outputs"]["pred"]
    assert outputs["channel_def"] == {str(i): name.replace("_", " ") for i, name in enumerate(CLASS_NAMES)}
    assert outputs["num_channels"] == len(CLASSES)


# vesicles become a class of their own: single membranes give them up, a new entry claims them
_SEVENTH = '''
import dataclasses

CLASSES = ClassRegistry([
    *(dataclasses.replace(c, objects=tuple(o for o in c.objects if o != "vesicle")) for c in CLASSES),
    ClassInfo("vesicle", (0.6, 0.4, 0.2), thin=True, paper_weight=2000.0, sampling_ratio=2.0,
              objects=("vesicle",)),
])
'''

_SCRIPT = r'''
import json, sys
from pathlib import Path
import numpy as np
from monai.bundle import ConfigWorkflow
import cryoet_monai
from cryoet_monai import PaperUNet
from cryoet_monai.data.synthetic import generate_tomogram
from cryoet_monai.inference import TomogramSegmenter
from cryoet_monai.io.mrc import read_mrc, save_mrc

root = Path(sys.argv[1])
configs = root / "configs"
assert cryoet_monai.CLASS_NAMES[-1] == "vesicle", cryoet_monai.__file__
features = [4, 8, 16, 32, 64]
wf = ConfigWorkflow(
    config_file=[str(configs / "train.json"), str(configs / "quick.json")],
    meta_file=str(configs / "metadata.json"), logging_file=False, workflow_type=None,
    bundle_root=str(root), output_dir=str(root / "run"),
    **{"synthetic#n_tomograms": 5, "synthetic#shape": [16, 96, 96], "synthetic#val_fraction": 0.2,
       "synthetic#test_fraction": 0.0, "synthetic#options": {"mode": "fourier"},
       "network_def#features": features, "network_def#dropout": 0.0, "patch_size": [32, 32],
       "train#batch_size": 2, "train#num_samples": 1, "train#epoch_length": 3, "train#trainer#max_epochs": 1,
       "validate#interval": 1, "validate#inferer#inferer#roi_size": [64, 64]},
)
wf.initialize()
datalist = json.loads(Path(wf.parser.get_parsed_content("datalist")).read_text())
base = Path(wf.parser.get_parsed_content("datalist")).parent
seen = set()
for item in datalist["training"]:
    seen |= set(np.unique(np.asarray(read_mrc(base / item["label"])[0])).tolist())
print("training labels", sorted(seen))
net = wf.parser.get_parsed_content("network_def")
print("out_channels", net.out_channels)
print("ratios", wf.parser.get_parsed_content("train#class_ratios"))
wf.parser.get_parsed_content("train#trainer").run()
ckpt = root / "run" / "models" / "model.pt"
image, _ = generate_tomogram((8, 48, 48), 10.0, 9, mode="fourier")
save_mrc(root / "t.mrc", image, voxel_size=10.0)
seg = TomogramSegmenter(PaperUNet(2, 1, len(cryoet_monai.CLASSES), features=features), model_path=ckpt,
                        model_voxel_size=10.0, progress=False, invert="no", save_probs=True)
(result,) = seg(root / "t.mrc", root / "out")
probs, _ = read_mrc(result["probs"])
print("probs channels", probs.shape[0])
print("fractions", json.dumps(result["class_fractions"]))
'''


def test_a_seventh_class_through_the_registry_alone(tmp_path: Path) -> None:
    """Copy the package and configs, make vesicles class 6 in classes.py only, then generate data,
    train a tiny network and segment with it."""
    root = tmp_path / "copy"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "cryoet_monai", root / "cryoet_monai", ignore=skip)
    shutil.copytree(REPO / "configs", root / "configs")
    registry = root / "cryoet_monai" / "classes.py"
    registry.write_text(registry.read_text() + _SEVENTH)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(root)], capture_output=True, text=True, env=env,
                          cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert 6 in json.loads(out.split("training labels ", 1)[1].splitlines()[0])  # the generator paints it
    assert "out_channels 7" in out
    assert "ratios [1.0, 2.0, 1.0, 1.0, 2.0, 1.0, 2.0]" in out
    assert "probs channels 7" in out
    fractions = json.loads(out.split("fractions ", 1)[1].splitlines()[0])
    assert list(fractions) == [*CLASS_NAMES, "vesicle"]
    assert np.isclose(sum(fractions.values()), 1.0)
