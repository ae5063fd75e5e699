"""Each report plot writes a whole PNG, atomically; Chinese label names draw with a CJK font when the
machine has one; without one the plots still come out, after one line on stderr."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import matplotlib
import pytest
from matplotlib import font_manager

from duplexlm import plots
from duplexlm.errors import ConfigError, DataError
from duplexlm.plots import plot_confusion_matrix, plot_curves, plot_label_efficiency, setup_cjk_font

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["正面", "负面", "中性"]


@pytest.fixture(autouse=True)
def _own_rcparams():
    # setup_cjk_font edits rcParams; keep each test's edits to itself
    with matplotlib.rc_context():
        yield


def _draw_all(d: Path) -> list[Path]:
    return [
        plot_confusion_matrix([[5, 1, 0], [2, 7, 1], [0, 0, 0]], NAMES, d / "cm.png"),
        plot_confusion_matrix([[5, 1, 0], [2, 7, 1], [0, 0, 0]], NAMES, d / "cm_counts.png", normalize=False),
        plot_curves({"训练损失": [(i, 3.0 / (i + 1)) for i in range(100)]}, d / "curves.png", "损失",
                    right={"验证准确率": [(10, 0.5), (50, 0.7), (99, 0.8)]}, right_ylabel="准确率"),
        plot_label_efficiency({"预训练 BERT": [(50, 0.7), (200, 0.8), (1000, 0.88)],
                               "GRU": [(1000, 0.8), (50, 0.5), (200, 0.62)]}, d / "sub" / "efficiency.png"),
    ]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])  # the IHDR chunk: width, height


def test_each_plot_writes_a_png(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")  # a machine without CJK fonts
        written = _draw_all(tmp_path)
    for path in written:
        width, height = _png_size(path)
        assert width > 200 and height > 200, path
    # atomic writes leave no temporaries behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png", "cm_counts.png", "curves.png", "sub"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["efficiency.png"]


def test_chinese_labels_draw_without_missing_glyphs(tmp_path: Path) -> None:
    family = setup_cjk_font()
    if family is None:
        pytest.skip("no CJK font on this machine (apt-get install fonts-wqy-microhei)")
    assert matplotlib.rcParams["font.sans-serif"][0] == family
    # the family matplotlib now picks for sans-serif text can draw Chinese
    path = font_manager.findfont(font_manager.FontProperties(family=["sans-serif"]), fallback_to_default=False)
    assert font_manager.get_font(path).get_char_index(ord("负")) != 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _draw_all(tmp_path)
    missing = [str(w.message) for w in caught if "missing from" in str(w.message)]
    assert missing == []


def test_the_packaged_font_draws_chinese_without_system_fonts(tmp_path: Path, monkeypatch) -> None:
    """A fresh machine without root has no CJK font in its system: the one that installs with the
    package (mplfonts' Noto Sans CJK SC) is found, registered and draws the Chinese glyphs."""
    monkeypatch.setattr(plots, "_cjk_family", plots._UNSET)
    monkeypatch.setattr(plots, "_fc_list", lambda: [])
    monkeypatch.setattr(plots, "_common_paths", lambda: [])
    known = [f for f in font_manager.fontManager.ttflist if f.name not in plots.CJK_FAMILIES]
    monkeypatch.setattr(font_manager.fontManager, "ttflist", known)  # matplotlib knows no CJK family
    monkeypatch.setitem(matplotlib.rcParams, "font.sans-serif", ["DejaVu Sans"])
    assert [Path(f).name for _, f in plots.packaged_fonts()] == ["NotoSansCJKsc-Regular.otf"]
    assert setup_cjk_font() == "Noto Sans CJK SC"
    path = font_manager.findfont(font_manager.FontProperties(family=["sans-serif"]), fallback_to_default=False)
    assert Path(path).name == "NotoSansCJKsc-Regular.otf"
    assert font_manager.get_font(path).get_char_index(ord("负")) != 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _draw_all(tmp_path)
    assert [str(w.message) for w in caught if "missing from" in str(w.message)] == []


def test_without_a_cjk_font_one_line_then_quiet(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(plots, "_cjk_family", plots._UNSET)
    monkeypatch.setattr(plots, "_find_cjk_font", lambda: None)
    monkeypatch.setitem(matplotlib.rcParams, "font.sans-serif", ["DejaVu Sans"])
    assert setup_cjk_font() is None
    assert setup_cjk_font() is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CJK font found" in err and "fonts-wqy-microhei" in err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = _draw_all(tmp_path)  # still written, boxes for the Chinese, no warning per glyph
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in written)
    assert [str(w.message) for w in caught if "missing from" in str(w.message)] == []
    assert capsys.readouterr().err == ""  # said once per process, not once per plot


def test_font_setup_never_fails(monkeypatch, capsys) -> None:
    def broken() -> str:
        raise RuntimeError("fontconfig exploded")

    monkeypatch.setattr(plots, "_cjk_family", plots._UNSET)
    monkeypatch.setattr(plots, "_find_cjk_font", broken)
    assert setup_cjk_font() is None
    assert "fontconfig exploded" in capsys.readouterr().err


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda d: plot_confusion_matrix([[1, 0], [0, 1]], NAMES, d / "x.png"), DataError, "shape (3, 3)"),
    (lambda d: plot_confusion_matrix([[1, -1], [0, 1]], NAMES[:2], d / "x.png"), DataError, ">= 0"),
    (lambda d: plot_confusion_matrix([[1]], ["a"], d / "x.pdf"), ConfigError, ".png"),
    (lambda d: plot_curves({"loss": []}, d / "x.png", "loss"), DataError, "at least one"),
    (lambda d: plot_curves({"loss": [1.0, 2.0]}, d / "x.png", "loss"), DataError, "(x, y) pairs"),
    (lambda d: plot_label_efficiency({"m": [(0, 0.5), (10, 0.6)]}, d / "x.png"), DataError, "n_labels > 0"),
    (lambda d: plot_label_efficiency({}, d / "x.png"), DataError, "at least one"),
])
def test_plot_errors_name_the_problem(tmp_path: Path, call, error, words: str) -> None:
    with pytest.raises(error) as info:
        call(tmp_path)
    assert words in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
