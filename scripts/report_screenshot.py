"""A PNG of a run's report.html, for the docs (no browser needed).

    pip install weasyprint pypdfium2      # not siamgrad dependencies; weasyprint needs the pango library
    python scripts/report_screenshot.py runs/RUN/report/report.html docs/img/report.png [--height 2200]

Renders the page with WeasyPrint (HTML + CSS to PDF), rasterizes it with pypdfium2 and keeps the
top ``--height`` pixels, trimmed of the white margin. WeasyPrint's flex layout is simpler than a
browser's, so spacing can differ slightly from what a browser shows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("html", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--height", type=int, default=2200, help="pixels kept from the top")
    p.add_argument("--width", type=int, default=1200, help="page width in CSS pixels")
    args = p.parse_args(argv)
    try:
        import pypdfium2
        import weasyprint
    except ImportError as e:
        print(f"error: {e.name} is missing; pip install weasyprint pypdfium2", file=sys.stderr)
        return 2
    page = weasyprint.CSS(string=f"@page {{ size: {args.width}px 20000px; margin: 12px }}")
    with tempfile.TemporaryDirectory() as tmp:
        pdf = Path(tmp) / "report.pdf"
        weasyprint.HTML(filename=str(args.html)).write_pdf(str(pdf), stylesheets=[page])
        image = pypdfium2.PdfDocument(str(pdf))[0].render(scale=1.25).to_pil().convert("RGB")
    gray = image.convert("L").point(lambda v: 255 if v > 248 else 0)
    box = gray.point(lambda v: 255 - v).getbbox() or (0, 0, *image.size)
    left, top, right, bottom = box
    image = image.crop((max(0, left - 8), max(0, top - 8), min(image.width, right + 8),
                        min(bottom + 8, top + args.height)))
    args.png.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=128).save(args.png, optimize=True)
    print(f"{args.png}: {image.width} x {image.height}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
