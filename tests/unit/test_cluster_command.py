"""`python -m e2e.cluster`: bad input is one line on stderr, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e.cluster.__main__ import main


def test_an_unknown_component_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["gomod", "bogus"])
    assert exited.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_a_build_without_go_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARASERVE_CACHE", str(tmp_path / "cache"))  # nothing built there
    monkeypatch.setenv("PATH", str(tmp_path))  # and no `go`
    with pytest.raises(SystemExit) as exited:
        main(["build"])
    assert "`go` is not on the PATH" in str(exited.value.code)


def test_a_failed_go_command_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    go = tmp_path / "go"
    go.write_text("#!/bin/sh\nexit 3\n")
    go.chmod(0o755)
    monkeypatch.setenv("PARASERVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert main(["build"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        last.startswith("python -m e2e.cluster build: `nice -n 10 go build") and "exited 3" in last
    )


@pytest.mark.parametrize("timeout", ["-1", "0", "abc"])
def test_up_needs_a_positive_timeout(timeout: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["up", "--timeout", timeout])
    assert exited.value.code == 2
    assert "argument --timeout" in capsys.readouterr().err
