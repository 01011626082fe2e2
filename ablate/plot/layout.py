"""Where a figure's words sit, in display pixels: the check that no two texts overlap and that no
legend covers a plot area (the tests run it on every kind), and the placement of point labels that
keeps to that rule (a label that cannot be placed clear of the others is left out, and counted).

Matplotlib reports each artist's bounding box once the figure is laid out; ``draw`` attaches an Agg
canvas when the figure has none, so this works on the plain ``Figure`` objects the renderers build.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

TOLERANCE_PX = 1.0  # glyph boxes include a little padding; touching is not overlapping


def draw(fig: Figure) -> RendererBase:
    """Lay the figure out (constrained layout runs at draw time) and return its renderer."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _shown(t: Text) -> bool:
    return t.get_visible() and bool(t.get_text().strip())


def _in_view(lo_hi: tuple[float, float], v: float) -> bool:
    lo, hi = sorted(lo_hi)
    return lo <= v <= hi


def _axes_texts(ax: Axes) -> list[Text]:
    """The axes' titles, labels, annotations and the tick labels of ticks inside the view (matplotlib
    keeps labels for ticks just outside it, which are never drawn)."""
    out = [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
    out += [t for t in ax.get_xticklabels(which="both") if _in_view(ax.get_xlim(), t.get_position()[0])]
    out += [t for t in ax.get_yticklabels(which="both") if _in_view(ax.get_ylim(), t.get_position()[1])]
    return out


def figure_texts(fig: Figure) -> list[Text]:
    """Every visible, non-empty text: titles, axis labels, tick labels, annotations, legend entries."""
    texts: list[Text] = list(fig.texts)  # holds the suptitle, when there is one
    legends = list(fig.legends)
    for ax in fig.axes:
        texts += _axes_texts(ax)
        if ax.get_legend() is not None:
            legends.append(ax.get_legend())
    for leg in legends:
        texts += [*leg.get_texts(), leg.get_title()]
    unique = {id(t): t for t in texts}  # an artist listed twice is not two texts
    return [t for t in unique.values() if _shown(t)]


def _shrunk(b: Bbox) -> Bbox:
    return Bbox.from_extents(b.x0 + TOLERANCE_PX, b.y0 + TOLERANCE_PX, b.x1 - TOLERANCE_PX, b.y1 - TOLERANCE_PX)


def overlapping_texts(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of texts whose boxes overlap (empty when the figure reads cleanly)."""
    renderer = draw(fig)
    boxes = [(t.get_text(), _shrunk(t.get_window_extent(renderer))) for t in figure_texts(fig)]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1 :] if box_a.overlaps(box_b)]


def legends_over_axes(fig: Figure) -> list[str]:
    """Legends whose box covers part of any plot area (they belong beside or below the data)."""
    renderer = draw(fig)
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    out = []
    for leg in legends:
        box = _shrunk(leg.get_window_extent(renderer))
        if any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes if ax.get_visible()):
            out.append(" / ".join(t.get_text() for t in leg.get_texts()[:2]))
    return out


# Offsets (points) tried in turn for a label beside its marker: right, above, left, below, then
# farther out with a thin leader line back to the marker.
_NEAR = ((7, 4), (7, -11), (-7, 4), (-7, -11), (0, 9), (0, -15))
_FAR = ((22, 16), (-22, 16), (22, -26), (-22, -26), (34, 0), (-34, 0), (0, 26), (0, -32))
MARKER_PX = 6.0  # half the side of the box kept clear around each marker


def place_labels(
    ax: Axes,
    points: Sequence[tuple[float, float, str]],
    avoid: Sequence[tuple[float, float]] = (),
    fontsize: str = "x-small",
) -> int:
    """Label data points without overlapping each other, the axes' texts or the markers at
    ``avoid`` (data coordinates); returns how many were left out because every position overlapped.
    Call after the rest of the figure is drawn."""
    renderer = draw(ax.figure)
    taken = [_shrunk(t.get_window_extent(renderer)) for t in _axes_texts(ax) if _shown(t)]
    for x, y in avoid:
        px, py = ax.transData.transform((x, y))
        taken.append(Bbox.from_extents(px - MARKER_PX, py - MARKER_PX, px + MARKER_PX, py + MARKER_PX))
    area = ax.get_window_extent(renderer)
    skipped = 0
    for x, y, text in points:
        for dx, dy in (*_NEAR, *_FAR):
            far = (dx, dy) in _FAR
            ann = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
                va="center",
                fontsize=fontsize,
                color="0.2",
                annotation_clip=True,
                arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.6, "shrinkB": 4} if far else None,
            )
            ann.set_in_layout(False)  # labels must not move the axes they were placed in
            box = ann.get_window_extent(renderer)
            inside = area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1
            if inside and not any(_shrunk(box).overlaps(t) for t in taken):
                taken.append(_shrunk(box))
                break
            ann.remove()
        else:
            skipped += 1
    return skipped
