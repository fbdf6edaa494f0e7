"""Package the project as a MONAI model-zoo bundle and verify the bundle offline.

Layout of a packaged bundle (``<name>/`` and ``<name>.zip``)::

    <name>/configs/        every file of configs/ (metadata.json, train.json, inference.json, logging.conf...)
    <name>/models/         model.pt (plain state_dict of ``network_def``)
    <name>/docs/           README.md (model card), license.txt, meta_schema.json, figures (from bundle/docs/)
    <name>/cryoet_monai/   the package itself, so ``import cryoet_monai`` works from the bundle folder
    <name>/large_files.yml weights listed with their md5, so ``download_large_files`` is a verified no-op
    <name>/LICENSE

:func:`verify_bundle` runs MONAI's own bundle tools on a (normally freshly unzipped) bundle, with all
network connections refused so that nothing can be fetched: ``verify_metadata`` against the shipped
schema, ``download_large_files`` (hash check only), ``verify_net_in_out``, ``ckpt_export`` to
TorchScript and ``onnx_export`` with their outputs compared to the eager network, and finally the
bundle's ``inference`` run from the bundle folder in a fresh interpreter on a small synthetic tomogram.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "BundleError",
    "NetworkAccessError",
    "CheckResult",
    "PackageReport",
    "DEFAULT_BUNDLE_NAME",
    "VERIFY_CHECKS",
    "build_bundle",
    "verify_bundle",
    "package_bundle",
    "no_network",
]

logger = logging.getLogger(__name__)

DEFAULT_BUNDLE_NAME = "cryoet_segmentation"
VERIFY_CHECKS: tuple[str, ...] = (
    "verify_metadata",
    "large_files",
    "verify_net_in_out",
    "torchscript",
    "onnx",
    "inference",
)
# development tooling, not part of the installed package: scripts/ sits in the checkout it packages
_REPO_ROOT = Path(__file__).resolve().parents[1]
_IGNORED_FILES = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


class BundleError(ValueError):
    """A bundle cannot be built (missing or inconsistent input file; the message names it)."""


class NetworkAccessError(OSError):
    """Raised instead of opening a network connection inside :func:`no_network`."""


@dataclass
class CheckResult:
    """Outcome of one verification step."""

    name: str
    passed: bool
    detail: str
    seconds: float


@dataclass
class PackageReport:
    """What :func:`package_bundle` produced and how its verification went."""

    bundle_dir: Path
    zip_path: Path | None
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle_dir": str(self.bundle_dir),
            "zip_path": None if self.zip_path is None else str(self.zip_path),
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
        }


@contextlib.contextmanager
def no_network(attempts: list[str] | None = None) -> Iterator[list[str]]:
    """Refuse every outgoing connection (and DNS lookup) in this process while the block runs.

    Yields the list to which each attempted address is appended, so a caller can assert that
    nothing tried to download. Unix-domain sockets are unaffected.
    """
    attempts = [] if attempts is None else attempts
    orig_connect, orig_create, orig_getaddrinfo = (
        socket.socket.connect,
        socket.create_connection,
        socket.getaddrinfo,
    )

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(str(address))
            raise NetworkAccessError(f"network access attempted during offline verification: {address}")
        return orig_connect(self, address)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        attempts.append(str(address))
        raise NetworkAccessError(f"network access attempted during offline verification: {address}")

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            attempts.append(str(host))
            raise NetworkAccessError(f"DNS lookup attempted during offline verification: {host}")
        return orig_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.create_connection = create_connection  # type: ignore[assignment]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    try:
        yield attempts
    finally:
        socket.socket.connect = orig_connect  # type: ignore[method-assign]
        socket.create_connection = orig_create  # type: ignore[assignment]
        socket.getaddrinfo = orig_getaddrinfo  # type: ignore[assignment]


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: cannot read JSON ({err})") from err


def _write_large_files_yml(
    path: Path, template: Path | None, weights: Sequence[Path], bundle_dir: Path
) -> None:
    """Write ``large_files.yml`` listing ``weights`` with their md5 (the url is kept from the template)."""
    urls: dict[str, str] = {}
    if template is not None and template.is_file():
        import yaml

        try:
            entries = (yaml.safe_load(template.read_text(encoding="utf-8")) or {}).get("large_files", [])
        except yaml.YAMLError as err:
            raise BundleError(f"{template}: not valid YAML ({err})") from err
        urls = {e["path"]: e.get("url", "") for e in entries if isinstance(e, dict) and "path" in e}
    lines = [
        "# Weights of this bundle with their md5; `python -m monai.bundle download_large_files` only",
        "# downloads an entry that is missing here (the reference weights ship inside the bundle).",
        "large_files:",
    ]
    for w in weights:
        rel = w.relative_to(bundle_dir).as_posix()
        lines += [
            f'  - path: "{rel}"',
            f'    url: "{urls.get(rel, "")}"',
            f'    hash_val: "{_md5(w)}"',
            '    hash_type: "md5"',
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_bundle(
    output_dir: str | os.PathLike,
    repo_root: str | os.PathLike | None = None,
    name: str = DEFAULT_BUNDLE_NAME,
    weights: str | os.PathLike | None = None,
    network_overrides: Mapping[str, Any] | None = None,
    make_zip: bool = True,
    overwrite: bool = False,
) -> tuple[Path, Path | None]:
    """Assemble ``<output_dir>/<name>/`` (and ``<output_dir>/<name>.zip``) from a source checkout.

    Args:
        output_dir: where the bundle folder and zip are created.
        repo_root: the project checkout holding ``configs/``, ``bundle/``, ``LICENSE`` and the
            ``cryoet_monai`` package (default: the checkout this script is in).
        name: bundle folder name.
        weights: the ``network_def`` state_dict to ship as ``models/model.pt`` (default
            ``<repo_root>/models/model.pt``).
        network_overrides: keys merged into every packaged config's ``network_def`` (e.g. the narrow
            ``features`` of a test model), so configs and weights agree.
        make_zip: also write ``<name>.zip`` (contains the ``<name>/`` folder).
        overwrite: replace an existing bundle folder/zip of that name.

    Returns:
        ``(bundle_dir, zip_path or None)``.
    """
    repo = Path(repo_root) if repo_root is not None else _REPO_ROOT
    weights_path = Path(weights) if weights is not None else repo / "models" / "model.pt"
    configs = repo / "configs"
    required = [
        configs / "metadata.json",
        configs / "inference.json",
        repo / "bundle" / "docs" / "README.md",
        repo / "bundle" / "meta_schema.json",
        repo / "LICENSE",
        weights_path,
    ]
    for path in required:
        if not path.is_file():
            raise BundleError(f"{path}: required to build the bundle but not found")
    out = Path(output_dir)
    bundle_dir = out / name
    zip_path = out / f"{name}.zip"
    if bundle_dir.exists() or (make_zip and zip_path.exists()):
        if not overwrite:
            raise BundleError(f"{bundle_dir}: exists already (pass overwrite=True to replace it)")
        shutil.rmtree(bundle_dir, ignore_errors=True)
        zip_path.unlink(missing_ok=True)
    # assemble in a temporary sibling folder, then rename: never leave half a bundle behind
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    staging.chmod(0o755)  # mkdtemp makes it private; the bundle is meant to be shared
    try:
        (staging / "configs").mkdir()
        for cfg in sorted(p for p in configs.iterdir() if p.is_file() and not p.name.startswith(".")):
            if network_overrides and cfg.suffix == ".json":
                content = _read_json(cfg)
                if isinstance(content, dict) and isinstance(content.get("network_def"), dict):
                    content["network_def"].update(network_overrides)
                    (staging / "configs" / cfg.name).write_text(json.dumps(content, indent=4) + "\n")
                    continue
            shutil.copy2(cfg, staging / "configs" / cfg.name)
        (staging / "models").mkdir()
        shutil.copy2(weights_path, staging / "models" / "model.pt")
        shutil.copytree(repo / "bundle" / "docs", staging / "docs", ignore=_IGNORED_FILES)
        shutil.copy2(repo / "LICENSE", staging / "docs" / "license.txt")
        shutil.copy2(repo / "LICENSE", staging / "LICENSE")
        shutil.copy2(repo / "bundle" / "meta_schema.json", staging / "docs" / "meta_schema.json")
        shutil.copytree(repo / "cryoet_monai", staging / "cryoet_monai", ignore=_IGNORED_FILES)
        _write_large_files_yml(
            staging / "large_files.yml",
            repo / "bundle" / "large_files.yml",
            [staging / "models" / "model.pt"],
            staging,
        )
        os.replace(staging, bundle_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not make_zip:
        return bundle_dir, None
    tmp_zip = out / f".{name}.zip.tmp"
    with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(bundle_dir.rglob("*")):
            zf.write(path, path.relative_to(out).as_posix())
    os.replace(tmp_zip, zip_path)
    return bundle_dir, zip_path


def _eager_network(bundle_dir: Path, config: Path, meta: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config))
    parser.read_meta(str(meta))
    parser["bundle_root"] = str(bundle_dir)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle_dir / "models" / "model.pt", map_location="cpu", weights_only=True))
    return net.eval()


def _example_input(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32))


def _write_example_tomogram(path: Path, shape: Sequence[int], voxel_size: float) -> Path:
    from cryoet_monai.data.synthetic import generate_tomogram
    from cryoet_monai.io.mrc import save_mrc

    image, _ = generate_tomogram(shape=tuple(shape), voxel_size=voxel_size, seed=7)
    return save_mrc(path, image, voxel_size=voxel_size)


def verify_bundle(
    bundle_dir: str | os.PathLike,
    checks: Sequence[str] = VERIFY_CHECKS,
    example_shape: Sequence[int] = (1, 1, 64, 64),
    tomogram_shape: Sequence[int] = (12, 64, 64),
    inference_args: Sequence[str] = ("--input", "{input}", "--output_dir", "{output_dir}"),
    atol: float = 1e-4,
    onnx_atol: float = 1e-3,
    timeout: float = 600.0,
) -> list[CheckResult]:
    """Run the offline checks on a bundle folder and return one :class:`CheckResult` per check.

    Every check runs even when an earlier one failed (a failure is reported, not raised), with
    network connections refused in this process; ``inference`` runs ``python -m monai.bundle run
    --config_file configs/inference.json <inference_args>`` in a fresh interpreter whose working
    directory is the bundle (so the bundle's own ``cryoet_monai`` copy is imported) on a synthetic
    tomogram of ``tomogram_shape`` written next to it, and checks the label volume it writes.

    Args:
        bundle_dir: the bundle folder (``configs/``, ``models/``, ``docs/``).
        checks: names from :data:`VERIFY_CHECKS` to run.
        example_shape: ``(1, C, H, W)`` input for the export parity checks (multiple of 16); ``C`` is
            taken from the metadata's ``num_channels``.
        tomogram_shape: ``(Z, Y, X)`` of the synthetic tomogram for the ``inference`` check.
        inference_args: extra command-line arguments; ``{input}``/``{output_dir}`` are substituted.
        atol: maximal absolute logit difference TorchScript vs eager.
        onnx_atol: maximal absolute logit difference ONNX Runtime vs eager.
        timeout: seconds allowed for the ``inference`` subprocess.
    """
    from monai import bundle as mb

    bundle = Path(bundle_dir).resolve()
    meta = bundle / "configs" / "metadata.json"
    config = bundle / "configs" / "inference.json"
    unknown = set(checks) - set(VERIFY_CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; choose from {VERIFY_CHECKS}")
    if not meta.is_file() or not config.is_file():
        raise BundleError(
            f"{bundle}: not a bundle (configs/metadata.json and configs/inference.json expected)"
        )
    # the input channels the network takes (5 slices for a 2.5-D model), from the metadata
    channels = json.loads(meta.read_text())["network_data_format"]["inputs"]["image"]["num_channels"]
    example_shape = (example_shape[0], int(channels), *example_shape[2:])
    x = _example_input(example_shape)
    results: list[CheckResult] = []
    work = Path(tempfile.mkdtemp(prefix="verify_", dir=bundle.parent))

    def export_parity(kind: str) -> str:
        how = ""
        eager = _eager_network(bundle, config, meta)
        with torch.no_grad():
            ref = eager(x)
        if kind == "torchscript":
            target = bundle / "models" / "model.ts"
            export = dict(
                net_id="network_def",
                filepath=str(target),
                ckpt_file=str(bundle / "models" / "model.pt"),
                meta_file=str(meta),
                config_file=str(config),
                bundle_root=str(bundle),
            )
            how = "torch.jit.script"
            try:
                mb.ckpt_export(**export)
            except Exception as err:  # not scriptable: a trace is still a valid TorchScript file
                mb.ckpt_export(**export, use_trace=True, input_shape=list(example_shape))
                how = f"torch.jit.trace (script failed: {str(err).strip().splitlines()[0][:120]})"
            extra = {"metadata.json": "", "inference.json": ""}
            ts = torch.jit.load(str(target), _extra_files=extra, map_location="cpu")
            if not json.loads(extra["inference.json"] or "{}"):
                raise AssertionError("the TorchScript file does not embed configs/inference.json")
            # a second, larger and non-square input: the exported graph must not be tied to one size
            x2 = _example_input((2, example_shape[1], example_shape[2] + 32, example_shape[3] + 64), seed=1)
            with torch.no_grad():
                out, out2, ref2 = ts(x), ts(x2), eager(x2)
            diff2 = float((out2 - ref2).abs().max()) if out2.shape == ref2.shape else math.inf
            if not diff2 <= atol:
                raise AssertionError(
                    f"{target.name}: input {tuple(x2.shape)}: max |logit difference| {diff2:.2e}"
                )
            tol = atol
        else:
            import onnxruntime as ort

            target = bundle / "models" / "model.onnx"
            mb.onnx_export(
                net_id="network_def",
                filepath=str(target),
                ckpt_file=str(bundle / "models" / "model.pt"),
                meta_file=str(meta),
                config_file=str(config),
                input_shape=list(example_shape),
                bundle_root=str(bundle),
            )
            sess = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
            out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
            tol = onnx_atol
        if out.shape != ref.shape:
            raise AssertionError(
                f"{target.name}: output shape {tuple(out.shape)} != eager {tuple(ref.shape)}"
            )
        diff = float((out - ref).abs().max())
        if not diff <= tol:
            raise AssertionError(f"{target.name}: max |logit difference| {diff:.2e} > {tol:g}")
        same = float((out.argmax(1) == ref.argmax(1)).float().mean())
        size = target.stat().st_size / 1e6
        text = f"{target.name} ({size:.2f} MB): max |diff| {diff:.2e} <= {tol:g}, argmax agree {same:.4f}"
        return text + (f"; exported with {how}" if kind == "torchscript" else "")

    def inference() -> str:
        meta_json = _read_json(meta)
        voxel = float(meta_json["network_data_format"]["inputs"]["image"].get("voxel_size_angstrom", 10.0))
        tomo = _write_example_tomogram(work / "example_tomogram.mrc", tomogram_shape, voxel)
        out_dir = work / "inference_output"
        args = [a.format(input=tomo, output_dir=out_dir) for a in inference_args]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", *args]
        probe = subprocess.run(
            [sys.executable, "-c", "import cryoet_monai; print(cryoet_monai.__file__)"],
            cwd=bundle,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        imported = Path(probe.stdout.strip() or "?").resolve()
        if bundle not in imported.parents:
            raise AssertionError(
                f"from the bundle folder `import cryoet_monai` loads {imported}, not the bundle's copy"
            )
        proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(
                f"`{' '.join(cmd[1:])}` exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
            )
        outputs = sorted(out_dir.rglob("*.mrc")) if out_dir.is_dir() else []
        if not outputs:
            raise AssertionError(f"inference wrote no .mrc under {out_dir}")
        from cryoet_monai.io.mrc import read_mrc

        seg, seg_meta = read_mrc(outputs[0])
        if tuple(seg.shape) != tuple(tomogram_shape):
            raise AssertionError(f"{outputs[0].name}: shape {seg.shape} != input {tuple(tomogram_shape)}")
        values = set(np.unique(np.asarray(seg)).tolist())
        if not values <= set(range(6)):
            raise AssertionError(f"{outputs[0].name}: labels {sorted(values)} outside 0..5")
        return f"{outputs[0].name}: {seg.shape} labels {sorted(values)}, voxel size {seg_meta['voxel_size']}"

    steps: dict[str, Callable[[], str]] = {
        "verify_metadata": lambda: (
            mb.verify_metadata(meta_file=str(meta), filepath=str(bundle / "docs" / "meta_schema.json")),
            "configs/metadata.json valid against docs/meta_schema.json",
        )[1],
        "large_files": lambda: (
            mb.download_large_files(bundle_path=str(bundle)),
            "large_files.yml: every listed file present with matching md5",
        )[1],
        "verify_net_in_out": lambda: (
            mb.verify_net_in_out(
                net_id="network_def",
                meta_file=str(meta),
                config_file=str(config),
                device="cpu",
                bundle_root=str(bundle),
            ),
            "network_def input/output channels and dtype match metadata",
        )[1],
        "torchscript": lambda: export_parity("torchscript"),
        "onnx": lambda: export_parity("onnx"),
        "inference": inference,
    }
    try:
        for name in checks:
            start = time.perf_counter()
            attempts: list[str] = []
            try:
                with no_network(attempts):
                    detail = steps[name]()
                passed = not attempts
                if attempts:
                    detail += f"; but tried to reach {attempts}"
            except Exception as err:  # a failed check is a result, not a crash
                passed, detail = False, f"{type(err).__name__}: {err}"
            results.append(CheckResult(name, passed, detail, round(time.perf_counter() - start, 2)))
            logger.info("%s %s: %s", "PASS" if passed else "FAIL", name, detail)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def package_bundle(
    output_dir: str | os.PathLike,
    repo_root: str | os.PathLike | None = None,
    name: str = DEFAULT_BUNDLE_NAME,
    weights: str | os.PathLike | None = None,
    network_overrides: Mapping[str, Any] | None = None,
    verify: bool = True,
    checks: Sequence[str] = VERIFY_CHECKS,
    overwrite: bool = False,
    **verify_kwargs: Any,
) -> PackageReport:
    """Build the bundle and zip (:func:`build_bundle`), then unzip it into a scratch folder and verify that.

    Verifying the unzipped copy proves the zip alone is complete. Returns a :class:`PackageReport`;
    ``report.passed`` is true only when every check passed.
    """
    bundle_dir, zip_path = build_bundle(
        output_dir, repo_root, name, weights, network_overrides, True, overwrite
    )
    report = PackageReport(bundle_dir, zip_path)
    if not verify:
        return report
    assert zip_path is not None
    scratch = Path(tempfile.mkdtemp(prefix="unzipped_", dir=bundle_dir.parent))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(scratch)
        report.checks = verify_bundle(scratch / name, checks=checks, **verify_kwargs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report
