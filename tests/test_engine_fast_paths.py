"""The engine's fast paths give the same bytes as the plain ones: zstd compressing guest memory
in place and decoding into it, and the destination's receivedmap (zero pages of fresh RAM never
written are left alone, any other zero page is still written)."""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
from pathlib import Path

import pytest
from qatmig_engine.api import migrate_loopback, send
from qatmig_engine.codecs import get_codec
from qatmig_engine.destination import Destination
from qatmig_engine.guest import GuestMemory, RAMBlock, fill_deterministic
from qatmig_engine.params import MigrationParameters

PAGE = 4096
MiB = 1 << 20


def _pages(n: int, seed: int = 3) -> bytearray:
    blk = RAMBlock.anonymous("x", n * PAGE)
    fill_deterministic(blk, seed=seed)
    out = bytearray(blk.view)
    blk.close()
    return out


def test_zstd_compress_parts_is_the_same_stream_as_compress() -> None:
    spec = get_codec("zstd")
    data = _pages(128)
    mv = memoryview(data)
    runs = [(0, 5), (7, 40), (41, 128)]  # page ranges, as the sender slices guest memory
    plain, parts = spec.new_compressor(1), spec.new_compressor(1)
    for _packet in range(3):  # the stream carries across packets
        gathered = b"".join(mv[a * PAGE : b * PAGE] for a, b in runs)
        want = plain.compress(gathered)
        got = parts.compress_parts([mv[a * PAGE : b * PAGE] for a, b in runs])
        assert bytes(got) == bytes(want)


def test_gathering_methods_decline_compress_parts() -> None:
    for method in ("zlib", "qatzip", "qpl", "uadk"):
        opts = {"qz": None} if method == "qatzip" else {}
        try:
            comp = get_codec(method).new_compressor(None, **opts)
        except TypeError:
            comp = get_codec(method).new_compressor(None)
        assert comp.compress_parts([memoryview(bytes(PAGE))]) is None, method


@pytest.mark.parametrize("method", ["zstd", "zlib", "none"])
@pytest.mark.parametrize("cuts", [(), (1,), (1, 2, 30), (5, 6, 7, 8, 9)])  # page boundaries
def test_decompress_into_pieces_equals_decompress(method: str, cuts: tuple[int, ...]) -> None:
    spec = get_codec(method)
    comp, plain, pieces = spec.new_compressor(None), spec.new_decompressor(), \
        spec.new_decompressor()
    for seed in (1, 2):  # two packets: the stream carries on across them
        data = bytes(_pages(32, seed))
        payload = comp.compress(data)
        want = bytes(plain.decompress(payload, 32))
        # The pages land in ranges of a bigger buffer with gaps between them, like runs of
        # guest pages around zero pages; the gaps stay untouched.
        bounds = [0, *(c * PAGE for c in cuts), len(data)]
        runs = [(a + i * PAGE, b + i * PAGE) for i, (a, b) in
                enumerate(itertools.pairwise(bounds))]
        out = bytearray(b"\xee" * (len(data) + len(runs) * PAGE))
        pieces.decompress_into(payload, 32, memoryview(out), runs)
        assert b"".join(out[a:b] for a, b in runs) == want == data
        gaps = [out[b : b + PAGE] for _a, b in runs]
        assert all(g == b"\xee" * PAGE for g in gaps)


@pytest.mark.parametrize("method", ["zstd", "zlib"])
def test_decompress_into_refuses_pieces_of_the_wrong_size(method: str) -> None:
    spec = get_codec(method)
    payload = spec.new_compressor(None).compress(bytes(_pages(4)))
    with pytest.raises(ValueError, match="not 16384"):
        spec.new_decompressor().decompress_into(payload, 4, memoryview(bytearray(8192)))
    with pytest.raises(ValueError, match="not 16384"):
        spec.new_decompressor().decompress_into(payload, 4, memoryview(bytearray(32768)),
                                                [(0, 4096), (8192, 12288)])


def test_zstd_bomb_is_still_stopped_at_the_bound_with_pieces() -> None:
    from qatmig_engine.errors import PayloadSizeError

    spec = get_codec("zstd")
    payload = spec.new_compressor(1).compress(bytes(8 * PAGE))  # 8 pages claimed as 4
    out = bytearray(5 * PAGE)
    with pytest.raises(PayloadSizeError):
        spec.new_decompressor().decompress_into(
            payload, 4, memoryview(out), [(0, 2 * PAGE), (3 * PAGE, 5 * PAGE)])


def _half_zero_guest(size: int) -> GuestMemory:
    blk = RAMBlock.anonymous("pc.ram", size)
    fill_deterministic(blk, seed=9)
    for o in range(0, size, 2 * PAGE):  # every other page zero
        blk.view[o : o + PAGE] = bytes(PAGE)
    return GuestMemory([blk])


@pytest.mark.parametrize("dialect", ["qemu-7.2", "qemu-9.2"])  # zero pages: main / multifd
def test_fresh_destination_file_stays_sparse_at_zero_pages(dialect: str) -> None:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("needs /dev/shm (tmpfs) to see which pages were touched")
    size = 8 * MiB
    g = _half_zero_guest(size)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        dst = Path(d) / "dst.img"
        # verify=False: comparing through the mapping would fault the holes in itself.
        st = migrate_loopback(params=MigrationParameters(dialect=dialect), guest=g,
                              destination_image=dst, timeout=10, verify=False)
        assert st.status == "completed", st.error
        allocated = os.stat(dst).st_blocks * 512
        assert dst.read_bytes() == bytes(g.blocks[0].view)  # read(2) allocates no hole
        g.close()
    # Half the pages are zero: a destination that reads or writes them allocates them too.
    assert allocated <= size // 2 + 64 * 1024, allocated


def test_zero_pages_still_clear_a_destination_that_is_not_fresh() -> None:
    size = 2 * MiB
    src = _half_zero_guest(size)
    blk = RAMBlock.anonymous("pc.ram", size)
    blk.view[:] = b"\xff" * size  # stale content: the zero pages must overwrite it
    dguest = GuestMemory([blk])
    params = MigrationParameters(multifd_compression="zstd")
    dst = Destination(dguest, params, timeout=10)  # fresh_ram defaults to False
    out: list = []
    t = threading.Thread(target=lambda: out.append(dst.run()))
    t.start()
    s = send(*dst.address, params=params, guest=src, timeout=10)
    t.join(20)
    assert s.status == "completed" and out[0].status == "completed", (s.error, out[0].error)
    assert bytes(blk.view) == bytes(src.blocks[0].view)
    src.close()
    dguest.close()


def _mapped(path: Path) -> bool:
    with open("/proc/self/maps") as f:
        return str(path) in f.read()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc/self/maps")
def test_on_done_runs_when_the_migration_ends_before_the_guests_are_unmapped(tmp_path) -> None:
    """Benchmarks end their measurement in ``on_done`` (QEMU's ends at ``completed``): it is
    called once per end with the returned stats while both guest images are still mapped."""
    from qatmig_engine import api
    from qatmig_engine.qemu.image import build_image

    size = 4 << 20
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    src.write_bytes(build_image(size, seed=5))
    params = MigrationParameters(multifd_channels=2, multifd_compression="none")
    seen: dict[str, list[tuple[object, bool]]] = {"send": [], "listen": []}
    box: dict[str, object] = {}
    ready = threading.Event()

    def serve() -> None:
        def on_ready(addr: tuple[str, int]) -> None:
            box["port"] = addr[1]
            ready.set()

        try:
            box["st"] = api.listen(
                "127.0.0.1", 0, dst, size, params, timeout=20, on_ready=on_ready,
                on_done=lambda st: seen["listen"].append((st, _mapped(dst))))
        finally:
            ready.set()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(20) and "port" in box
    st = api.send("127.0.0.1", int(box["port"]), src, params, timeout=20,  # type: ignore[arg-type]
                  on_done=lambda s: seen["send"].append((s, _mapped(src))))
    t.join(30)
    assert st.status == "completed" and box["st"].status == "completed"  # type: ignore[union-attr]
    assert seen["send"] == [(st, True)] and seen["listen"] == [(box["st"], True)]
    assert not _mapped(src) and not _mapped(dst)  # unmapped after on_done
    assert dst.read_bytes() == src.read_bytes()
