"""The HTML run report: one self-contained file (inline SVG curves and scatter, PNG slices), from Python and
from ``mmvae report``."""

from __future__ import annotations

import base64
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from core.display import colorize
from core.workflows.cli import main
from core.workflows.report import png_bytes, svg_line_chart, write_report
from core.workflows.runs import parse_run_config, train_run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = parse_run_config({
        "name": "report-test",
        "data": {"source": "demo", "demo": {"n_subjects": 12, "shape": [16, 16, 16], "seed": 4, "template": "procedural"}},
        "model": {"name": "MVAE", "latent_dim": 4},
        "training": {"num_epochs": 2, "batch_size": 4},
    })
    run = tmp_path_factory.mktemp("runs") / "report-test"
    result = train_run(config, run)
    assert result.status == "completed"
    return run


def _decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    idat = b"".join(data[i + 8 : i + 8 + struct.unpack(">I", data[i : i + 4])[0]]
                    for i in [m.start() - 4 for m in re.finditer(b"IDAT", data)])
    return width, height, colour, zlib.decompress(idat)


def test_png_writer_round_trip() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    width, height, colour, raw = _decode_png(png_bytes(gray))
    assert (width, height, colour) == (4, 3, 0)
    assert raw == b"".join(b"\x00" + gray[r].tobytes() for r in range(3))
    rgb = colorize(np.linspace(-1, 1, 6).reshape(2, 3), (-1.0, 1.0), "diverging")
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert _decode_png(png_bytes(rgb))[:3] == (3, 2, 2)


def test_line_chart_picks_log_scale_for_wide_ranges() -> None:
    svg = svg_line_chart({"train": ([1, 2, 3], [1000.0, 10.0, 0.5])}, "loss")
    assert svg.startswith("<svg") and "(log y)" in svg and "<polyline" in svg
    assert "(log y)" not in svg_line_chart({"train": ([1, 2], [-1.0, 2.0])})


def test_report_is_one_self_contained_html_file(trained_run: Path, tmp_path: Path) -> None:
    path = write_report(trained_run, tmp_path / "report.html", n_panels=2, n_samples=3)
    text = path.read_text(encoding="utf-8")
    for section in ("Training curves", "Latent space", "Imputation quality", "Leave-one-out synthesis", "Configuration"):
        assert f"<h2>{section}</h2>" in text
    assert "MVAE" in text and "showing 12 of 12 subjects" in text
    assert text.count("<svg") >= 2 + 1 + 4  # total loss and terms, joint projection, one per modality
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(images) >= 2 * 4
    for data in images:
        width, height, _, _ = _decode_png(base64.b64decode(data))
        assert (width, height) == (16, 16)
    assert not re.search(r"(src|href)=['\"](?!data:)", text)  # nothing to fetch: no external file or URL
    assert "model beats the mean image" in text
    assert "<b>Verdict</b>" in text and "better than the average brain" in text  # one per modality
    assert list((trained_run / "projections").glob("pca-*.npz"))  # the projection was cached with the run


def test_mmvae_report_command(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli" / "report.html"
    assert main(["report", str(trained_run), "--out", str(out), "--panels", "1", "--samples", "2", "--quiet"]) == 0
    assert out.is_file() and "report written to" in capsys.readouterr().out
    assert main(["report", str(trained_run), "--out", str(tmp_path / "report.pdf"), "--quiet"]) == 1
    assert "must end in .html" in capsys.readouterr().err
