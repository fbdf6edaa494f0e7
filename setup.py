"""Build hook: the shipped bundle (configs and weights) travels inside the package.

Metadata and dependencies are in setup.cfg. ``build_py`` copies ``configs/*``, ``models/model.pt``
and its int8 OpenVINO model (``models/model_int8.*``) of this checkout into ``cryoet_monai/shipped/``
of the built wheel, so that an
installed ``cryoet-monai segment`` finds its model without a checkout (read with
``importlib.resources``). An editable install reads them from the checkout instead. Written by hand
because setuptools' package_data only takes files below a package's own folder, and the bundle
layout (configs/, models/ at the root) is what ``python -m monai.bundle`` expects.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = [*sorted(p.relative_to(ROOT) for p in (ROOT / "configs").iterdir() if p.is_file()),
           Path("models/model.pt"),
           *sorted(p.relative_to(ROOT) for p in (ROOT / "models").glob("model_int8.*")),
           Path("LICENSE")]


class BuildPyWithBundle(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "cryoet_monai" / "shipped"
        for rel in SHIPPED:
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(ROOT / rel), str(dest))


setup(cmdclass={"build_py": BuildPyWithBundle})
