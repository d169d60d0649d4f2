"""Placing a figure's text labels so that no two overlap and each stays inside its axes."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from attnbench.report.escaping import literal_figure

LABEL_GAP_PX = 2.0  # clear space kept between two labels and inside the axes frame, in pixels at the figure's dpi
_EPS = 1e-6  # a box placed exactly LABEL_GAP_PX from another is clear of it despite rounding


def _clear(box: Bbox, others: list[Bbox], gap: float) -> bool:
    return not any(
        box.x0 < o.x1 + gap - _EPS
        and o.x0 < box.x1 + gap - _EPS
        and box.y0 < o.y1 + gap - _EPS
        and o.y0 < box.y1 + gap - _EPS
        for o in others
    )


def _inside(box: Bbox, frame: Bbox) -> bool:
    return (
        box.x0 >= frame.x0 - _EPS
        and box.x1 <= frame.x1 + _EPS
        and box.y0 >= frame.y0 - _EPS
        and box.y1 <= frame.y1 + _EPS
    )


def _label_shift(box: Bbox, frame: Bbox, placed: list[Bbox], gap: float, down: bool) -> tuple[float, float] | None:
    """The smallest move (in pixels) that puts `box` inside `frame` and clear of every placed box;
    with `down`, any move down before one up.

    Vertical moves first, so a label stays beside the line or point it names; a horizontal one
    only where no vertical move will do. The best position along an axis is 0 or an edge of a
    placed box or of the frame, so trying those finds it when there is one."""
    # into the frame horizontally first (a label by the right edge would run past it)
    if box.x0 < frame.x0 + gap:
        dx0 = frame.x0 + gap - box.x0
    elif box.x1 > frame.x1 - gap:
        dx0 = frame.x1 - gap - box.x1
    else:
        dx0 = 0.0
    dys = [0.0, frame.y0 + gap - box.y0, frame.y1 - gap - box.y1]
    dys += [d for o in placed for d in (o.y0 - gap - box.y1, o.y1 + gap - box.y0)]
    dxs = [dx0, frame.x0 + gap - box.x0, frame.x1 - gap - box.x1]
    dxs += [d for o in placed for d in (o.x0 - gap - box.x1, o.x1 + gap - box.x0)]
    for moves in (
        sorted(((dx0, dy) for dy in dys), key=lambda m: (down and m[1] > 0, abs(m[1]), m[1] > 0)),
        sorted(
            ((dx, dy) for dx in dxs for dy in dys),
            key=lambda m: (down and m[1] > 0, abs(m[0]) + abs(m[1]), m[1] > 0, m[0]),
        ),
    ):
        for dx, dy in moves:
            moved = box.translated(dx, dy)
            if _inside(moved, frame.padded(-gap)) and _clear(moved, placed, gap):
                return dx, dy
    return None


def _move_text(t: Text, dx: float, dy: float) -> None:
    """Move a label by (dx, dy) pixels in whatever coordinates it was placed (an annotation's
    offset points included: its transform is current after get_window_extent)."""
    trans = t.get_transform()
    x, y = trans.transform(t.get_unitless_position())
    t.set_position(tuple(trans.inverted().transform((x + dx, y + dy))))


def separate_labels(ax: Axes, texts: list[Text] | None = None, gap: float = LABEL_GAP_PX, down: bool = False) -> None:
    """Move the axes' text labels (annotations included) apart until no two overlap and each lies
    inside the axes, measured as matplotlib will draw them.

    Deterministic: labels are placed left to right (top first at the same x), each moved as
    little as it takes from where the figure code put it (with `down`, down where it can: labels
    to the right of one another then step down in order). A label that fits nowhere is hidden
    rather than drawn over another; with the report's few short labels that does not happen."""
    texts = [t for t in (ax.texts if texts is None else texts) if t.get_visible() and t.get_text().strip()]
    if not texts:
        return
    fig = ax.figure
    literal_figure(fig)  # measured with the text _save draws (`$` as written)
    fig.draw_without_rendering()  # final limits and layout: the extents below are the drawn ones
    frame = ax.get_window_extent()
    boxes = [(t, t.get_window_extent()) for t in texts]
    placed: list[Bbox] = []
    for t, box in sorted(boxes, key=lambda tb: (tb[1].x0, -tb[1].y1)):
        move = _label_shift(box, frame, placed, gap, down)
        if move is None:
            t.set_visible(False)
            continue
        if move != (0.0, 0.0):
            _move_text(t, *move)
        placed.append(box.translated(*move))
