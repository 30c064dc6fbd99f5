"""Showing a figure on a page: PNG at the page's width, alt text, a floor on text size."""
from __future__ import annotations

import base64
import html
import io

import matplotlib.pyplot as plt

# The report's pages show figures at most this wide (CSS pixels; report.py's page style caps the content at
# 960 px, less padding). A figure wider than this is scaled down to it, and its text with it.
PAGE_WIDTH_PX = 900
MIN_TEXT_PX = 10  # the smallest text a page may show, at PAGE_WIDTH_PX
FIGURE_DPI = 120


def figure_png(fig, dpi: int = FIGURE_DPI) -> bytes:
    """The figure as PNG bytes, cropped to its content (as Jupyter's inline backend does)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def smallest_text_px(fig, png_width_px: int, dpi: int = FIGURE_DPI, page_width_px: int = PAGE_WIDTH_PX):
    """(size in CSS pixels, the text) of the figure's smallest visible text once the PNG is shown on a page.

    The PNG is shown at its natural CSS width (``png_width_px * 96 / dpi``), scaled down to ``page_width_px``
    when wider; a text of ``s`` points is ``s * dpi / 72`` PNG pixels. Returns (inf, "") without text.
    """
    from matplotlib.text import Text

    natural = png_width_px * 96 / dpi
    scale = min(1.0, page_width_px / natural) * natural / png_width_px  # CSS px per PNG px
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
             and (t.axes is None or t.axes.get_visible())]
    if not texts:
        return float("inf"), ""
    smallest = min(texts, key=lambda t: t.get_fontsize())
    return smallest.get_fontsize() * dpi / 72 * scale, smallest.get_text()


def figure_html(fig, alt: str, dpi: int = FIGURE_DPI, min_text_px: float = MIN_TEXT_PX) -> str:
    """``fig`` as an <img> with ``alt`` text (what the figure shows); closes it.

    Raises ValueError when ``alt`` is empty or when the figure's smallest text would be under ``min_text_px`` CSS
    pixels at the page's width: enlarge that text or narrow the figure.
    """
    png, css_width = _checked_png(fig, alt, dpi, min_text_px)
    return _img_tag(base64.b64encode(png).decode(), css_width, alt)


def show_figure(fig, alt: str, dpi: int = FIGURE_DPI, min_text_px: float = MIN_TEXT_PX):
    """Display ``fig`` in the notebook as an <img> with ``alt`` text, then close it (checks as ``figure_html``).

    The output carries both an HTML <img> (what the rendered page shows, with its alt text) and the plain PNG
    (what the index takes as the page's thumbnail).
    """
    png, css_width = _checked_png(fig, alt, dpi, min_text_px)
    _display_png(png, css_width, alt)


def _checked_png(fig, alt: str, dpi: int, min_text_px: float) -> tuple[bytes, int]:
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
    return png, round(width * 96 / dpi)


def show_image(image, alt: str, width_px: int = PAGE_WIDTH_PX):
    """Display a PIL image (a photo, an annotated copy) as an <img> with ``alt`` text, at most ``width_px``
    CSS pixels wide; text drawn on it should be sized for that width (photos.annotate does so)."""
    if not alt or not alt.strip():
        raise ValueError("show_image needs an alt text that says what the image shows")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    _display_png(buffer.getvalue(), min(width_px, image.size[0]), alt)


def _img_tag(png_base64: str, css_width: int, alt: str) -> str:
    return (f'<img src="data:image/png;base64,{png_base64}" alt="{html.escape(alt.strip())}" '
            f'style="width:{css_width}px;max-width:100%;height:auto">')


def _display_png(png: bytes, css_width: int, alt: str) -> None:
    """An <img> for the rendered page (with its alt text) and the plain PNG (the index's thumbnail)."""
    from IPython.display import display

    data = base64.b64encode(png).decode()
    display({"text/html": _img_tag(data, css_width, alt), "image/png": data, "text/plain": alt.strip()}, raw=True,
            metadata={"image/png": {"alt": alt.strip()}})


# --------------------------------------------------------------------------------------------- page structure


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
