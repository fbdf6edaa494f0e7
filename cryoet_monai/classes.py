"""The class registry: every fact about a label class lives here, once.

Code and configs derive the class count, names, colours, loss weights, sampling ratios, the
thin classes (scored with a boundary tolerance) and the synthetic generator's class mix from
:data:`CLASSES`. Adding a class is one :class:`ClassInfo` entry: its ``objects`` say which
generator object kinds (see :data:`GENERATOR_OBJECTS`) are painted with its label.

Pure Python on purpose: ``import cryoet_monai`` reads it without importing torch or numpy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CLASSES", "GENERATOR_OBJECTS", "ClassInfo", "ClassRegistry", "by_class_name"]

#: object kinds the synthetic generator draws (:mod:`cryoet_monai.data.synthetic`); a kind no class
#: claims is painted as background
GENERATOR_OBJECTS: tuple[str, ...] = (
    "microtubule", "ribosome", "mitochondrion", "cristae", "nuclear_envelope", "vesicle", "er_cisterna",
    "membrane_sheet", "carbon", "actin", "distractor", "gold",
)  # fmt: skip


def by_class_name(values: Mapping[str, float], names: Sequence[str], default: float,
                  what: str = "value") -> list[float]:
    """One number per name of ``names`` from a mapping by class name (missing names: ``default``);
    names not in ``names`` raise ``ValueError`` naming ``what``."""
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{what}: unknown class {unknown} (known: {', '.join(names)})")
    return [float(values.get(n, default)) for n in names]


@dataclass(frozen=True)
class ClassInfo:
    """One label class.

    Attributes:
        name: identifier used in configs, metrics and file metadata (``"single_membrane"``).
        color: RGB in 0..1, the same in every figure, preview, napari layer and OME-Zarr label.
        thin: scored with a boundary tolerance (surface Dice, tolerant F1): filaments and membranes.
        paper_weight: the seed paper's cross-entropy weight.
        sampling_ratio: default crop-centre ratio of class-balanced sampling (configs may override
            by name).
        present_probability: probability that the generator puts the class in a tomogram.
        objects: generator object kinds painted with this label.
    """

    name: str
    color: tuple[float, float, float]
    thin: bool = False
    paper_weight: float = 1.0
    sampling_ratio: float = 1.0
    present_probability: float = 1.0
    objects: tuple[str, ...] = ()


class ClassRegistry(Sequence[ClassInfo]):
    """An ordered set of classes; the index of a class is its label value (0 = background)."""

    def __init__(self, classes: Sequence[ClassInfo]) -> None:
        self._classes = tuple(classes)
        names = [c.name for c in self._classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")
        claimed = [o for c in self._classes for o in c.objects]
        if len(set(claimed)) != len(claimed):
            raise ValueError(f"a generator object belongs to one class at most, got {claimed}")
        unknown = sorted(set(claimed) - set(GENERATOR_OBJECTS))
        if unknown:
            raise ValueError(f"unknown generator objects {unknown} (known: {', '.join(GENERATOR_OBJECTS)})")

    def __getitem__(self, index):  # type: ignore[override]
        return self._classes[index]

    def __len__(self) -> int:
        return len(self._classes)

    def __iter__(self) -> Iterator[ClassInfo]:
        return iter(self._classes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self._classes)

    @property
    def colors(self) -> tuple[tuple[float, float, float], ...]:
        return tuple(c.color for c in self._classes)

    @property
    def thin(self) -> tuple[int, ...]:
        """Label values of the thin classes."""
        return tuple(i for i, c in enumerate(self._classes) if c.thin)

    @property
    def paper_weights(self) -> tuple[float, ...]:
        return tuple(c.paper_weight for c in self._classes)

    @property
    def foreground(self) -> tuple[str, ...]:
        return self.names[1:]

    def value(self, name: str) -> int:
        """Label value of a class name."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown class {name!r} (known: {', '.join(self.names)})") from None

    def label_of(self, obj: str) -> int:
        """Label value the generator paints an object kind with (0: background)."""
        if obj not in GENERATOR_OBJECTS:
            raise KeyError(f"unknown generator object {obj!r}")
        return next((i for i, c in enumerate(self._classes) if obj in c.objects), 0)

    def class_mix(self) -> dict[str, float]:
        """Default presence probability of each foreground class in a synthetic tomogram."""
        return {c.name: c.present_probability for c in self._classes[1:]}

    def per_class(self, values: Mapping[str, float] | Sequence[float] | None, default: float,
                  what: str = "value") -> list[float] | None:
        """One number per class from a mapping by class name (missing names get ``default``) or a
        full sequence; ``None`` stays ``None``. Unknown names and wrong lengths raise ``ValueError``."""
        if values is None:
            return None
        if isinstance(values, Mapping):
            return by_class_name(values, self.names, default, what)
        out = [float(v) for v in values]
        if len(out) != len(self):
            raise ValueError(f"{what}: needs {len(self)} numbers (one per class), got {len(out)}")
        return out

    def ratios(self, overrides: Mapping[str, float] | None = None) -> list[float]:
        """Crop-centre ratios for class-balanced sampling: the registry's, with ``overrides`` by name."""
        base = {c.name: c.sampling_ratio for c in self._classes}
        return self.per_class({**base, **dict(overrides or {})}, 1.0, "class ratios") or []


#: the classes of this project: background, the seed paper's five features
CLASSES = ClassRegistry([
    ClassInfo("background", (0.0, 0.0, 0.0), paper_weight=1.0),  # and every object no class claims
    ClassInfo("microtubule", (0.13, 0.80, 0.13), thin=True, paper_weight=2000.0, sampling_ratio=2.0,
              present_probability=0.9, objects=("microtubule",)),
    ClassInfo("ribosome", (1.0, 0.84, 0.0), paper_weight=3000.0, sampling_ratio=2.0,
              present_probability=1.0, objects=("ribosome",)),
    ClassInfo("double_membrane", (0.90, 0.10, 0.10), thin=True, paper_weight=2000.0, sampling_ratio=3.0,
              present_probability=0.85, objects=("mitochondrion", "cristae", "nuclear_envelope")),
    ClassInfo("single_membrane", (0.20, 0.50, 1.0), thin=True, paper_weight=2000.0, sampling_ratio=3.0,
              present_probability=0.95, objects=("vesicle", "er_cisterna", "membrane_sheet")),
    ClassInfo("carbon_edge", (1.0, 0.0, 1.0), paper_weight=3000.0, sampling_ratio=1.0,
              present_probability=0.7, objects=("carbon",)),
])  # fmt: skip
