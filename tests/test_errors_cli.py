"""Every user error is one line (exit 2 for a config error, 1 for the rest); a bug keeps the debug hint."""
import pytest

from ssl_derm.cli import main
from ssl_derm.errors import ConfigError, DataError, SplitError, UserError


def _lines(capsys):
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_config_error_is_one_line_exit_2(tmp_path, capsys):
    assert main(["finetune", "--out", str(tmp_path / "x"), "protocol.name=knn", "protocol.threshold=0.9"]) == 2
    lines = _lines(capsys)
    assert len(lines) == 1 and "protocol.threshold" in lines[0] and "knn_k" in lines[0]
    assert "SSL_DERM_DEBUG" not in lines[0]


def test_data_error_is_one_line_exit_1(tmp_path, capsys):
    assert main(["segment", "--out", str(tmp_path / "x"), f"data.images=[{tmp_path / 'nope'}]",
                 f"data.cache_dir={tmp_path / 'c'}"]) == 1
    lines = _lines(capsys)
    assert len(lines) == 1 and "nope" in lines[0] and "SSL_DERM_DEBUG" not in lines[0]


def test_internal_error_keeps_the_debug_hint(tmp_path, capsys, monkeypatch):
    import ssl_derm.data

    def broken(*a, **k):
        raise ZeroDivisionError("division by zero\nin a helper")

    monkeypatch.setattr(ssl_derm.data, "write_synthetic", broken)
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--n", "4"]) == 1
    lines = _lines(capsys)
    assert len(lines) == 1 and "[ZeroDivisionError; set SSL_DERM_DEBUG=1 for the traceback]" in lines[0]
    monkeypatch.setenv("SSL_DERM_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["data", "synth", "--out", str(tmp_path / "s"), "--n", "4"])


def test_user_errors_keep_their_builtin_bases():
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(SplitError, DataError) and all(issubclass(c, UserError) for c in (ConfigError, DataError))
    assert ConfigError.exit_code == 2 and DataError.exit_code == 1


def test_default_config_gives_way_to_the_chosen_plugin(tmp_path):
    """Without --config, an override that picks another plug-in does not inherit the default file's
    plug-in keys; with --config the file is checked strictly."""
    from ssl_derm.cli import build_parser, load_run_config
    from ssl_derm.config import PretrainConfig
    from ssl_derm.evaluate.config import FinetuneConfig

    args = build_parser().parse_args(["pretrain", "--out", str(tmp_path), "method.name=byol"])
    assert type(load_run_config(PretrainConfig, args, "pretrain/simclr_resnet18.yaml").method).__name__ == "BYOLSettings"
    args = build_parser().parse_args(["finetune", "--out", str(tmp_path), "protocol.name=fixmatch"])
    cfg = load_run_config(FinetuneConfig, args, "finetune/linear.yaml")
    assert cfg.protocol.name == "fixmatch" and cfg.protocol.mu == 7 and cfg.train.max_steps == 2000  # fixmatch.yaml
    args = build_parser().parse_args(["finetune", "--config", "configs/finetune/linear.yaml", "--out", str(tmp_path),
                                      "protocol.name=knn"])
    with pytest.raises(ConfigError, match="protocol.linear_C.*knn"):
        load_run_config(FinetuneConfig, args, "finetune/linear.yaml")


def test_overrides_may_follow_an_option_after_a_positional(capsys):
    """``sweep FILE --out DIR k=v`` (the order a user types) keeps every override; a stray non-override
    word is still refused with argparse's message and exit 2."""
    from ssl_derm.cli import parse_args

    args = parse_args(["sweep", "configs/sweeps/finetune_gap_ham10000.yaml", "seeds=[0]", "--out", "runs/x",
                       "common.device=cpu", "grid.init=[random]"])
    assert (args.config, args.out) == ("configs/sweeps/finetune_gap_ham10000.yaml", "runs/x")
    assert args.overrides == ["seeds=[0]", "common.device=cpu", "grid.init=[random]"]
    with pytest.raises(SystemExit) as e:
        parse_args(["sweep", "configs/sweeps/finetune_gap_ham10000.yaml", "--out", "runs/x", "stray"])
    assert e.value.code == 2 and "unrecognized arguments: stray" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a command without overrides takes none
        parse_args(["configs", "show", "finetune/linear", "k=v"])
