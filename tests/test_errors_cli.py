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
