"""Report plots: confusion matrices, training curves, label-efficiency curves, written as PNG files.

Each function draws on its own :class:`matplotlib.figure.Figure` with the Agg canvas rather than
through ``pyplot``: nothing is registered in pyplot's global figure list (so nothing leaks when a
long run draws hundreds of plots, and there is nothing to close), and the user's chosen backend is
left alone — ``matplotlib.use("Agg")`` would switch it for the whole process. Files are written
atomically, so a report directory never holds half a PNG.

Chinese label names need a CJK font, which a fresh machine lacks: :func:`setup_cjk_font` finds one
(through fontconfig or the usual paths), registers it with matplotlib and puts it first; without
one the plots are still written, with boxes for the missing characters.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> plot_label_efficiency({"bert-tiny": [(10, 0.5), (100, 0.7), (1000, 0.8)]}, d / "eff.png").name
'eff.png'
>>> (d / "eff.png").read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from matplotlib import font_manager, rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from .errors import ConfigError, DataError
from .fileutil import atomic_write

# Sans-serif CJK families, best first (names as fontconfig and matplotlib report them).
CJK_FAMILIES: tuple[str, ...] = (
    "Noto Sans CJK SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "Source Han Sans",
    "Microsoft YaHei",
    "PingFang SC",
    "SimHei",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Noto Sans CJK JP",  # the first face of Noto's .ttc: its Han glyphs cover Chinese text too
    "Noto Sans CJK",
)

# Where those families usually live, for systems without fontconfig (macOS, Windows, minimal images).
_FONT_GLOBS: tuple[str, ...] = (
    "/usr/share/fonts/**/NotoSansCJK*-Regular.tt[cf]",
    "/usr/share/fonts/**/NotoSansCJK*.otf",
    "/usr/share/fonts/**/SourceHanSans*.tt[cf]",
    "/usr/share/fonts/**/SourceHanSans*.otf",
    "/usr/share/fonts/**/wqy-microhei.ttc",
    "/usr/share/fonts/**/wqy-zenhei.ttc",
    "/usr/local/share/fonts/**/*CJK*",
    "~/.fonts/**/*CJK*",
    "~/.local/share/fonts/**/*CJK*",
    "/System/Library/Fonts/PingFang.ttc",
    "/Library/Fonts/*Hei*",
    "C:/Windows/Fonts/msyh.tt[cf]",
    "C:/Windows/Fonts/simhei.ttf",
)

# Fonts that install with a Python package, so a fresh machine without root draws Chinese: mplfonts
# (a dependency of duplexlm) ships Noto Sans CJK SC. Its files are read; its code is never imported.
PACKAGED_FONTS: tuple[tuple[str, str], ...] = (("mplfonts", "fonts/NotoSansCJKsc-Regular.otf"),)

_PROBE = "中"  # a common Han character: a font without it is no help
_UNSET = object()
_cjk_family: object = _UNSET  # the family found by the first call (None: none found), per process


def _family_rank(families: Sequence[str]) -> int:
    """Position in CJK_FAMILIES of the best of a font's family names; len(CJK_FAMILIES) if none."""
    ranks = [CJK_FAMILIES.index(f.strip()) for f in families if f.strip() in CJK_FAMILIES]
    return min(ranks) if ranks else len(CJK_FAMILIES)


def _fc_list() -> list[tuple[int, str]]:
    """(rank, file) for each font fontconfig says covers Chinese; [] without fontconfig."""
    exe = shutil.which("fc-list")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-f", "%{family}\t%{file}\n", ":lang=zh"], capture_output=True, text=True,
                             timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.splitlines():
        families, _, file = line.partition("\t")
        if file:
            found.append((_family_rank(families.split(",")), file))
    return found


def _common_paths() -> list[tuple[int, str]]:
    found = []
    for pattern in _FONT_GLOBS:
        for file in glob.glob(os.path.expanduser(pattern), recursive=True):
            found.append((len(CJK_FAMILIES), file))  # ranked by the name read from the file below
    return found


def packaged_fonts() -> list[tuple[int, str]]:
    """(rank, file) for each CJK font an installed package ships (:data:`PACKAGED_FONTS`)."""
    found = []
    for package, name in PACKAGED_FONTS:
        spec = importlib.util.find_spec(package)
        for root in (spec.submodule_search_locations or []) if spec else []:
            file = Path(root) / name
            if file.is_file():
                found.append((len(CJK_FAMILIES), str(file)))
    return found


def _usable_family(file: str) -> str | None:
    """The family matplotlib will use for ``file`` once registered, if it draws Chinese."""
    try:
        font = font_manager.get_font(file)
        if font.get_char_index(ord(_PROBE)) == 0:
            return None
        return font.family_name
    except Exception:  # an unreadable or unsupported file is simply not a candidate
        return None


def _find_cjk_font() -> str | None:
    # 1. a family matplotlib already knows (.ttf/.otf it found itself, or one registered earlier)
    known = {f.name for f in font_manager.fontManager.ttflist}
    for family in CJK_FAMILIES:
        if family in known:
            return family
    # 2. files from fontconfig, the usual places and installed packages, best family first; .ttc
    #    collections are never scanned by matplotlib, so each is registered by path
    candidates = sorted(set(_fc_list()) | set(_common_paths()) | set(packaged_fonts()))
    best: tuple[int, str, str] | None = None
    for rank, file in candidates:
        family = _usable_family(file)
        if family is None:
            continue
        rank = min(rank, _family_rank([family]))
        if best is None or rank < best[0]:
            best = (rank, family, file)
    if best is None:
        return None
    font_manager.fontManager.addfont(best[2])
    return best[1]


def setup_cjk_font() -> str | None:
    """Make matplotlib draw Chinese: find a CJK font (Noto Sans CJK SC, Source Han Sans, Microsoft
    YaHei, PingFang SC, SimHei, WenQuanYi Micro Hei, ...; any font fontconfig lists for Chinese as a
    last resort), register it and put its family first in ``rcParams["font.sans-serif"]``. Returns
    the family, or None after saying so once, in one line on stderr. Never raises: a report without
    Chinese glyphs is better than no report.

    The search runs once per process; later calls only put the family back in front (in case
    rcParams were reset). Other fonts stay in the list after it, so matplotlib still falls back to
    them glyph by glyph (Latin text, the minus sign).

    >>> family = setup_cjk_font()
    >>> family is None or rcParams["font.sans-serif"][0] == family
    True
    """
    global _cjk_family
    try:
        if _cjk_family is _UNSET:
            _cjk_family = _find_cjk_font()
            if _cjk_family is None:
                print("duplexlm: no CJK font found (looked for " + ", ".join(CJK_FAMILIES[:8]) + "); Chinese text "
                      "in plots will show as boxes; install one, e.g. pip install mplfonts or apt-get install fonts-wqy-microhei",
                      file=sys.stderr)
        family = _cjk_family
        if isinstance(family, str):
            rest = [f for f in rcParams["font.sans-serif"] if f != family]
            rcParams["font.sans-serif"] = [family, *rest]
            return family
        return None
    except Exception as e:  # a broken font setup must not stop an evaluation
        if _cjk_family is _UNSET:
            _cjk_family = None
            print(f"duplexlm: no CJK font set up ({type(e).__name__}: {e}); Chinese text in plots will show "
                  "as boxes", file=sys.stderr)
        return None


# ----------------------------------------------------------------------------------------------------
# Drawing and writing


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches drawn by Agg, outside pyplot (no global state).

    >>> new_figure(4, 3).get_size_inches().tolist()
    [4.0, 3.0]
    """
    # constrained layout keeps rotated tick labels, colour bars and outside legends inside the image
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: Agg, whatever pyplot's backend is
    return fig


def png_path(path: str | Path) -> Path:
    """``path`` as a Path, checked to name a ``.png`` file (a :class:`ConfigError` otherwise)."""
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"path: expected a file name ending in .png, found {str(path)!r}")
    return out


@contextmanager
def _quiet_if_no_font(font: str | None) -> Iterator[None]:
    # without a CJK font each missing glyph warns on every draw; the one stderr line said it already
    with warnings.catch_warnings():
        if font is None:
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
        yield


def save_figure(fig: Figure, path: Path, dpi: int, font: str | None) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically and free it; ``font`` is :func:`setup_cjk_font`'s answer
    (``None`` silences the missing-glyph warnings that line already reported)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_if_no_font(font):
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    # A Figure made without pyplot is not in pyplot's registry, so there is nothing to close: it is
    # freed with its last reference. Clearing it drops the artists at once.
    fig.clear()
    return path


def _points(series: Mapping[str, Sequence[Sequence[float]]], what: str) -> dict[str, np.ndarray]:
    """Each named series as an (n, 2) float array; errors name the series and point."""
    if not isinstance(series, Mapping):
        raise DataError(f"{what}: expected a dict from series name to a list of (x, y) points, "
                        f"found {type(series).__name__}")
    out = {}
    for name, pts in series.items():
        arr = np.asarray(list(pts), dtype=np.float64) if len(pts) else np.zeros((0, 2))
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise DataError(f"{what}[{name!r}]: expected a list of (x, y) pairs, found shape {arr.shape}")
        out[str(name)] = arr
    return out


# ----------------------------------------------------------------------------------------------------
# The plots


def plot_confusion_matrix(cm: np.ndarray | Sequence[Sequence[int]], label_names: Sequence[str], path: str | Path,
                          normalize: bool = True, *, title: str | None = None, dpi: int = 120) -> Path:
    """Draw a confusion matrix (rows true, columns predicted) as a heat map, each cell annotated;
    with ``normalize`` each row is divided by its total, so a cell is the share of a true class
    given that prediction (a row with no examples stays 0). Returns ``path``.

    >>> import tempfile, pathlib
    >>> png = pathlib.Path(tempfile.mkdtemp()) / "cm.png"
    >>> plot_confusion_matrix([[5, 1], [2, 7]], ["正面", "负面"], png).stat().st_size > 0
    True
    """
    out = png_path(path)
    names = [str(n) for n in label_names]
    arr = np.asarray(cm, dtype=np.float64)
    k = len(names)
    if k == 0 or arr.shape != (k, k):
        raise DataError(f"confusion matrix: expected shape ({k}, {k}) for {k} label names, found {arr.shape}")
    if not np.all(np.isfinite(arr)) or (arr < 0).any():
        raise DataError("confusion matrix: expected finite counts >= 0")
    if normalize:
        totals = arr.sum(axis=1, keepdims=True)
        shown = np.divide(arr, totals, out=np.zeros_like(arr), where=totals > 0)
    else:
        shown = arr
    font = setup_cjk_font()
    side = min(4.0 + 0.45 * k, 24.0)  # grows with the classes so the annotations stay legible
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(shown.max()), 1.0)
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    tilt = max(map(len, names)) > 3  # long names would run into each other on the x axis
    ax.set_xticks(range(k), labels=names, rotation=45 if tilt else 0, ha="right" if tilt else "center",
                  rotation_mode="anchor")
    ax.set_yticks(range(k), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize else "confusion matrix"))
    if k <= 30:  # past that the numbers would overlap; the colours still tell
        for i in range(k):
            for j in range(k):
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(arr[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8 if k > 10 else 10,
                        color="white" if shown[i, j] > 0.5 * vmax else "black")
    return save_figure(fig, out, dpi, font)


def plot_curves(series: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, ylabel: str, *,
                right: Mapping[str, Sequence[tuple[float, float]]] | None = None, right_ylabel: str | None = None,
                xlabel: str = "step", title: str | None = None, logy: bool = False, dpi: int = 120) -> Path:
    """Draw curves of ``(step, value)`` points, one line per named series, on one axis labelled
    ``ylabel``; series in ``right`` go on a second y axis (``right_ylabel``), so a training loss and
    a validation accuracy share the plot with their own scales. NaN values leave gaps. Returns
    ``path``.

    >>> import tempfile, pathlib
    >>> png = pathlib.Path(tempfile.mkdtemp()) / "curves.png"
    >>> plot_curves({"train loss": [(0, 2.0), (10, 1.2), (20, 0.9)]}, png, "loss",
    ...             right={"val accuracy": [(10, 0.6), (20, 0.7)]}, right_ylabel="accuracy").name
    'curves.png'
    """
    out = png_path(path)
    left_pts = _points(series, "series")
    right_pts = _points(right or {}, "right")
    if not any(len(a) for a in [*left_pts.values(), *right_pts.values()]):
        raise DataError("series: expected at least one (step, value) point, found none")
    font = setup_cjk_font()
    fig = new_figure(7.5, 4.5)
    ax = fig.add_subplot()
    twin = ax.twinx() if right_pts else None
    colors = rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    lines = []
    drawn = [(ax, "-", name, arr) for name, arr in left_pts.items()]
    drawn += [(twin, "--", name, arr) for name, arr in right_pts.items()]
    for i, (target, ls, name, arr) in enumerate(drawn):
        # one marker per point for short series (validation every N steps), plain lines for long ones
        style = {"marker": "o", "markersize": 3} if len(arr) <= 60 else {}
        (line,) = target.plot(arr[:, 0], arr[:, 1], color=colors[i % len(colors)], lw=1.2, ls=ls, label=name,
                              **style)
        lines.append(line)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if twin is not None:
        twin.set_ylabel(right_ylabel or "")
    ax.grid(alpha=0.3)
    labels = [ln.get_label() for ln in lines]
    if twin is None:
        ax.legend(lines, labels, loc="best")
    else:
        # one legend for both axes, above them: "best" on either axis would only dodge its own lines
        fig.legend(lines, labels, loc="outside upper center", ncols=min(len(lines), 4), frameon=False)
    if title:
        ax.set_title(title)
    return save_figure(fig, out, dpi, font)


def plot_label_efficiency(points: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, *,
                          ylabel: str = "accuracy", title: str | None = None, dpi: int = 120) -> Path:
    """Draw score against the number of labelled examples, one line per model, with a log x axis
    (each tenfold more labels gets the same width), ticks at the sizes measured. Returns ``path``.

    >>> import tempfile, pathlib
    >>> png = pathlib.Path(tempfile.mkdtemp()) / "eff.png"
    >>> plot_label_efficiency({"预训练": [(100, 0.8), (10, 0.6)], "GRU": [(10, 0.5), (100, 0.6)]}, png).name
    'eff.png'
    """
    out = png_path(path)
    pts = _points(points, "points")
    if not any(len(a) for a in pts.values()):
        raise DataError("points: expected at least one (n_labels, score) point, found none")
    for name, arr in pts.items():
        if len(arr) and not (arr[:, 0] > 0).all():
            raise DataError(f"points[{name!r}]: expected n_labels > 0 (log axis), found "
                            f"{arr[~(arr[:, 0] > 0), 0][0]:g}")
    font = setup_cjk_font()
    fig = new_figure(7.0, 4.5)
    ax = fig.add_subplot()
    for name, arr in pts.items():
        arr = arr[np.argsort(arr[:, 0], kind="stable")]
        ax.plot(arr[:, 0], arr[:, 1], "o-", lw=1.5, markersize=4, label=name)
    ax.set_xscale("log")
    sizes = sorted({float(x) for arr in pts.values() for x in arr[:, 0]})
    if len(sizes) <= 12:  # label the sizes actually measured (e.g. 50, 200, 1000) in plain numbers
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("labelled examples (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best")
    if title:
        ax.set_title(title)
    return save_figure(fig, out, dpi, font)


__all__ = ["CJK_FAMILIES", "plot_confusion_matrix", "plot_curves", "plot_label_efficiency", "setup_cjk_font"]
