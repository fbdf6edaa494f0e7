#!/usr/bin/env bash
# A separate environment for the copick integration (docs/copick.md, tests/test_copick.py).
#
# copick 1.31 pins zarr < 3 and numcodecs < 0.16 while our zarr extra needs zarr >= 3.1, so copick gets
# its own venv. To avoid a second torch/MONAI install (GBs, minutes) the new venv borrows the base
# venv's packages through a .pth file: its own site-packages come first on sys.path, so copick and
# its pins (zarr 2, ome-zarr 0.11, ...) shadow the base venv's versions; everything copick does not
# bring (torch, monai, ...) is found in the base venv. Both must be the same Python version, which is
# why the new venv is made with the base venv's interpreter.
#
# Usage: scripts/copick_env.sh [COPICK_ENV [BASE_VENV]]   (defaults: /tmp/copick-env and .venv)
# Then:  COPICK_ENV/bin/python -m pytest tests/test_copick.py
set -euo pipefail
cd "$(dirname "$0")/.."

env_dir=${1:-/tmp/copick-env}
base=${2:-.venv}
copick_version=${COPICK_VERSION:-1.31.0}  # the version tests/test_copick.py was run against

"$base/bin/python" -m venv --clear "$env_dir"
"$env_dir/bin/python" -m pip install -q "copick==$copick_version" "ome-zarr<0.12"  # 0.12+ need zarr 3
# our package without its dependencies: they come from the base venv; the editable install
# registers the copick.inference.commands entry point (setup.cfg)
"$env_dir/bin/python" -m pip install -q --no-deps -e .

site=$("$env_dir/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
"$base/bin/python" -c 'import sysconfig; print(*sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}), sep="\n")' \
    > "$site/zz_cryoet_monai_base_venv.pth"  # path lines are appended after this venv's site-packages

"$env_dir/bin/python" - <<'EOF'
from importlib.metadata import entry_points

import copick, monai, torch, zarr

import cryoet_monai

assert zarr.__version__.startswith("2."), f"zarr {zarr.__version__}: the base venv's zarr shadows copick's"
commands = {e.name: e.value for e in entry_points(group="copick.inference.commands")}
assert commands.get("cryoet-monai") == "cryoet_monai.integrations.copick:segment", commands
print(f"copick {copick.__version__}, zarr {zarr.__version__}, torch {torch.__version__}, monai {monai.__version__},"
      f" cryoet_monai from {cryoet_monai.__file__}")
EOF
