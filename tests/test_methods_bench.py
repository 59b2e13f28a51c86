"""The throughput benchmark runs end to end on the CPU and reports all three paths and both ratios."""
import json


from ssl_derm.commands.bench import main, run_throughput



def test_run_throughput_tiny(tmp_path, capsys):
    r = run_throughput("simclr", "resnet18", 32, 4, 1, "cpu", quick=True, workers=0, n_images=8, warmup=1)
    for key in ("ceiling_img_s", "sslderm_img_s", "lightly_img_s", "augment_only_img_s"):
        assert r[key] > 0, key
    assert r["ratio_b_a"] == r["sslderm_img_s"] / r["ceiling_img_s"]
    assert r["n_images"] == 8 and r["device"] == "cpu" and not r["resident_on_gpu"]
    assert "b/a =" in capsys.readouterr().out


def test_cli_writes_json(tmp_path):
    out = tmp_path / "r.json"
    main(["--quick", "--method", "mae", "--encoder", "vit_tiny_patch16_224", "--image-size", "32", "--batch-size", "4",
          "--steps", "1", "--n-images", "8", "--workers", "0", "--device", "cpu", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["method"] == "mae" and r["image_size"] == 32 and r["lightly_img_s"] > 0
