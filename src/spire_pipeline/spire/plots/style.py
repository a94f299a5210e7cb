"""What every figure of the project shares: one colour per method, labels in words, layout.

Colours are keyed by the method names of :mod:`spire_pipeline.spire.methods` (a method that
both pretrains and adapts, like ``spire``, has one colour in every figure); a name that is not a
method gets a stable colour of its own from a second palette.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextPath

from spire_pipeline.spire.methods import ADAPTATION_METHODS, PRETRAINING_METHODS, PROPOSED

#: every known method, the proposed one first (pretraining methods, then adaptation ones)
KNOWN_METHODS: tuple[str, ...] = tuple(
    dict.fromkeys((PROPOSED, *PRETRAINING_METHODS, *ADAPTATION_METHODS))
)
# Tableau 10, reordered so that the proposed method is red and no two methods share a colour.
_METHOD_PALETTE = (
    "#d62728",  # red
    "#1f77b4",  # blue
    "#2ca02c",  # green
    "#8c564b",  # brown
    "#7f7f7f",  # grey
    "#ff7f0e",  # orange
    "#9467bd",  # purple
    "#17becf",  # cyan
    "#bcbd22",  # olive
    "#e377c2",  # pink
)
# For names that are not methods (or methods beyond the ten colours): darker, distinct hues.
_FALLBACK_PALETTE = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354")
#: colour of real data (reference lines, real-image rows)
REAL_COLOUR = "black"

METHOD_COLOURS: dict[str, str] = dict(zip(KNOWN_METHODS, _METHOD_PALETTE))


def method_colour(method: str) -> str:
    """The colour of ``method`` in every figure (a stable fallback for unknown names)."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    digest = int(hashlib.sha256(method.encode()).hexdigest(), 16)
    return _FALLBACK_PALETTE[digest % len(_FALLBACK_PALETTE)]


def method_order(methods: Iterable[str]) -> list[str]:
    """``methods`` without repeats, known methods in palette order first, then the rest sorted."""
    unique = set(methods)
    known = [m for m in KNOWN_METHODS if m in unique]
    return known + sorted(unique - set(known))


#: phase of the KID table -> what it means, in words
PHASE_TITLES = {
    "pretrained": "after federated pretraining",
    "adapted": "unseen clients, after adaptation",
    "after_adaptation": "seen clients, after adapting to the unseen ones (forgetting)",
    "sweep": "robustness sweep",
}

_EXTRACTOR_LABEL = re.compile(r"^(?P<name>.+)_(?P<size>\d+)px$")


def extractor_words(extractor: str) -> str:
    """``efficientnet_lite0_64px`` -> ``efficientnet_lite0 features at 64 px``."""
    m = _EXTRACTOR_LABEL.match(extractor or "")
    if m is None:
        return f"{extractor} features" if extractor else "image features"
    return f"{m['name']} features at {m['size']} px"


def kid_label(extractor: str, what: str = "KID") -> str:
    """Axis label of a KID value: what it is, its features and its direction.

    KID values are the unbiased MMD² as computed (no ×10³ scaling anywhere in the project).
    """
    return f"{what} ({extractor_words(extractor)}), lower is better"


def class_label(label: int, class_names: Sequence[str] = ()) -> str:
    """The name of class ``label`` when known, else its number."""
    label = int(label)
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def class_list(labels: Iterable[int], class_names: Sequence[str] = ()) -> str:
    """``"Coat, Shirt"`` (or ``"classes 4, 6"`` when the names are unknown)."""
    labels = sorted({int(v) for v in labels})
    if class_names and all(0 <= v < len(class_names) for v in labels):
        return ", ".join(class_names[v] for v in labels)
    return "classes " + ", ".join(map(str, labels))


def text_width_in(text: str, fontsize: float) -> float:
    """Width of ``text`` in inches at ``fontsize`` points (no renderer needed)."""
    lines = str(text).split("\n") or [""]
    props = FontProperties(size=fontsize)
    width_pt = max(TextPath((0, 0), line or " ", prop=props).get_extents().width for line in lines)
    return width_pt / 72.0


def new_figure(width: float, height: float) -> Figure:
    """A figure whose layout keeps titles, labels, colour bars and outside legends in view."""
    return Figure(figsize=(width, height), layout="constrained")


def legend_outside(ax: Axes, title: str | None = None, fontsize: float = 8, **kwargs) -> None:
    """A legend to the right of ``ax``, off the data (constrained layout makes room for it)."""
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        fontsize=fontsize,
        title=title,
        title_fontsize=fontsize,
        frameon=False,
        **kwargs,
    )
