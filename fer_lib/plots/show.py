"""Showing a figure on a page: PNG at the page's width, alt text, a floor on text size."""
from __future__ import annotations

import base64
import html
import io

import matplotlib.pyplot as plt

PAGE_WIDTH_PX = 900  # the widest figure a page shows (CSS px; content is capped at 960): wider ones shrink, text too
MIN_TEXT_PX = 10  # the smallest text a page may show, at PAGE_WIDTH_PX
FIGURE_DPI = 120


def figure_png(fig, dpi: int = FIGURE_DPI) -> bytes:
    """The figure as PNG bytes, cropped to its content (as Jupyter's inline backend does)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def smallest_text_px(fig, png_width_px: int, dpi: int = FIGURE_DPI, page_width_px: int = PAGE_WIDTH_PX):
    """(size in CSS pixels, the text) of the figure's smallest visible text once its PNG is shown on a page: at its
    natural CSS width (``png_width_px * 96 / dpi``), scaled down to ``page_width_px``. (inf, "") without text."""
    from matplotlib.text import Text

    natural = png_width_px * 96 / dpi
    scale = min(1.0, page_width_px / natural) * natural / png_width_px  # CSS px per PNG px
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
             and (t.axes is None or t.axes.get_visible())]
    if not texts:
        return float("inf"), ""
    smallest = min(texts, key=lambda t: t.get_fontsize())
    return smallest.get_fontsize() * dpi / 72 * scale, smallest.get_text()


def show_figure(fig, alt: str, dpi: int = FIGURE_DPI, min_text_px: float = MIN_TEXT_PX):
    """Display ``fig`` with ``alt`` text (what it shows), then close it. Raises ValueError when ``alt`` is empty or
    when the figure's smallest text would be under ``min_text_px`` CSS pixels at the page's width."""
    from PIL import Image

    if not alt or not alt.strip():
        raise ValueError("a figure needs an alt text that says what it shows")
    png = figure_png(fig, dpi)
    width = Image.open(io.BytesIO(png)).size[0]
    size, text = smallest_text_px(fig, width, dpi)
    inches = fig.get_figwidth()
    plt.close(fig)
    if size < min_text_px:
        raise ValueError(f"the text {text[:40]!r} would show at {size:.1f} px on the page (at least {min_text_px} "
                         f"px): enlarge it or narrow the figure ({inches:.1f} inches wide)")
    _display_png(png, round(width * 96 / dpi), alt)


def show_image(image, alt: str, width_px: int = PAGE_WIDTH_PX):
    """Display a PIL image (a photo, an annotated copy) with ``alt`` text, at most ``width_px`` CSS pixels wide;
    text drawn on it should be sized for that width (photos.annotate does so)."""
    if not alt or not alt.strip():
        raise ValueError("show_image needs an alt text that says what the image shows")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    _display_png(buffer.getvalue(), min(width_px, image.size[0]), alt)


def _display_png(png: bytes, css_width: int, alt: str) -> None:
    """An <img> for the rendered page (with its alt text) and the plain PNG (the index's thumbnail)."""
    from IPython.display import display

    data, alt = base64.b64encode(png).decode(), alt.strip()
    img = (f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
           f'style="width:{css_width}px;max-width:100%;height:auto">')
    display({"text/html": img, "image/png": data, "text/plain": alt}, raw=True, metadata={"image/png": {"alt": alt}})


def interval(low: float, high: float, value: float | None = None, signed: bool = False, digits: int = 0) -> str:
    """A 95% interval of a share as the pages write it: "64–69%", with its ``value`` "66% (64–69%)"; ``signed``,
    a difference in points: "+1.0 to +2.9 points"."""
    if signed:
        return f"{low * 100:+.{digits}f} to {high * 100:+.{digits}f} points"
    text = f"{low * 100:.{digits}f}–{high * 100:.{digits}f}%"
    return text if value is None else f"{value * 100:.{digits}f}% ({text})"


def show_caption(text: str) -> None:
    """The one-line caption under a figure: what to look at."""
    import mistune
    from IPython.display import HTML, display

    inner = mistune.html(text).strip().removeprefix("<p>").removesuffix("</p>")
    display(HTML(f'<p class="fer-caption">{inner}</p>'))
