"""benchmarks/_listen_send.py, the destination/source process pair of bench_memory.py and
profile_engine.py: a destination that never starts ends the run in bounded time."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("_listen_send",
                                               ROOT / "benchmarks" / "_listen_send.py")
assert _spec is not None and _spec.loader is not None
ls = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ls)

SILENT = "import sys, time\nif sys.argv[1] == 'listen':\n    time.sleep(60)\n"
WRONG = "print('Traceback (most recent call last):')\n"


@pytest.mark.parametrize(("runner", "message"), [
    (SILENT, "none x2: the destination process: no line within 1 s (expected 'READY <port>')"),
    (WRONG, "none x2: the destination did not start: 'Traceback (most recent call last):'"),
])
def test_a_destination_that_never_listens_ends_the_run(tmp_path: Path, runner: str,
                                                       message: str) -> None:
    src = tmp_path / "src.img"
    src.write_bytes(bytes(4096))
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as info:
        ls.listen_and_send(runner, src, tmp_path / "dst.img", 4096, "none", 2, timeout=5,
                           start_timeout=1)
    assert str(info.value) == message
    assert time.monotonic() - t0 < 15
