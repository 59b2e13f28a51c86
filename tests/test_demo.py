"""`ssl-derm demo --quick`: every stage runs and the report holds the tables and figures."""
from ssl_derm.cli import main


def test_quick_demo_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    for heading in ("## Pretraining", "## Annotation-free segmentation", "## Few labels: pretrained vs random init"):
        assert heading in report
    assert "| pretrained | knn |" in report and "| random | linear |" in report
    import re

    ahead, total = map(int, re.search(r"ahead of random initialisation in \*\*(\d+) of (\d+)\*\*", report).groups())
    assert total == 4 and 0 <= ahead <= total  # knn and linear at 2 label fractions (5% and 100%)
    assert "| knn | 5% |" in report and "| linear | 100% |" in report
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert any(f.startswith("segment_") for f in figures) and any(f.startswith("label_efficiency_") for f in figures)
    for line in report.splitlines():  # every image the report shows is there
        if line.startswith("!["):
            assert (out / line.split("(")[1].rstrip(")")).is_file(), line
    assert str(out / "report.md") in capsys.readouterr().out
