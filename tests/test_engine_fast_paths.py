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
from qatmig_engine.errors import CodecError
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
    with pytest.raises(ValueError, match=r"range 28672\.\.45056 outside 0\.\.32768"):
        spec.new_decompressor().decompress_into(payload, 4, memoryview(bytearray(32768)),
                                                [(0, 0), (28672, 45056)])


def test_zstd_bomb_is_still_stopped_at_the_bound_with_pieces() -> None:
    from qatmig_engine.errors import PayloadSizeError

    spec = get_codec("zstd")
    payload = spec.new_compressor(1).compress(bytes(8 * PAGE))  # 8 pages claimed as 4
    out = bytearray(5 * PAGE)
    with pytest.raises(PayloadSizeError, match=r"multifd 0: packet size received 16385 size expec"):
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


# --------------------------------------------------------------------- zlib through cffi
needs_zlib_ffi = pytest.mark.skipif(
    __import__("qatmig_engine.codecs._zlib_ffi", fromlist=["lib"]).lib is None,
    reason="libz.so.1 is not Python's zlib build (see qatmig_engine.codecs._zlib_ffi)")


def _module_zlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Codec objects made after this use Python's zlib module (the fallback path)."""
    from qatmig_engine.codecs import _zlib_ffi

    monkeypatch.setattr(_zlib_ffi, "lib", None)


def _zlib_packets() -> list[bytes]:
    data = bytes(_pages(128, seed=11))
    return [data, data[: 3 * PAGE], data[7 * PAGE : 100 * PAGE], bytes(128 * PAGE),
            os.urandom(128 * PAGE), data[PAGE : 2 * PAGE]]


@needs_zlib_ffi
@pytest.mark.parametrize("level", range(10))
def test_zlib_fast_path_sends_the_bytes_of_pythons_zlib(level: int) -> None:
    """One deflate(Z_SYNC_FLUSH) per packet into a reused buffer = compress + flush of the
    zlib module, packet after packet of one stream, at every level."""
    import zlib

    comp = get_codec("zlib").new_compressor(level)
    assert comp._fast == (level != 0)  # type: ignore[attr-defined]
    z = zlib.compressobj(level)
    views = []
    for pk in _zlib_packets():
        want = z.compress(pk) + z.flush(zlib.Z_SYNC_FLUSH)
        got = comp.compress_view(memoryview(pk))
        assert bytes(got) == want
        views.append(got)
    if level:  # the views share the compressor's one buffer: valid until the next call
        assert views[0].obj is views[-1].obj  # type: ignore[union-attr]
    comp.close()
    comp.close()  # idempotent


def _bad_zlib_payloads() -> list[tuple[str, bytes, int]]:
    import zlib

    data = bytes(_pages(4, seed=2))
    good = get_codec("zlib").new_compressor(1).compress(data)
    finished = zlib.compress(data, 1) + b"\x00\x00\xff\xff"
    c = zlib.compressobj(1)
    two = c.compress(data + data) + c.flush(zlib.Z_SYNC_FLUSH)
    return [
        ("too few pages", good, 5),
        ("too many pages (bomb)", two, 4),
        ("corrupt", good[:2] + bytes([good[2] ^ 0xFF]) + good[3:], 4),
        ("finished stream", finished, 4),
        ("no flush marker", good[:-1], 4),
        ("garbage before the marker", good[:-4] + b"\x01\x02" + good[-4:], 4),
        ("preset dictionary", b"\x78\xbb" + good[2:], 4),
    ]


@needs_zlib_ffi
@pytest.mark.parametrize("case", range(len(_bad_zlib_payloads())))
def test_zlib_fast_decoder_fails_like_the_module(case: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Same error type (and then a refused stream) for every bad payload, fast or not, and
    straight into guest memory no byte lands outside the packet's runs."""
    _what, payload, pages = _bad_zlib_payloads()[case]
    fast = get_codec("zlib").new_decompressor(channel=3)
    out = bytearray(b"\xee" * ((pages + 1) * PAGE))
    runs = [(0, PAGE), (2 * PAGE, (pages + 1) * PAGE)]
    with pytest.raises(CodecError) as got:
        fast.decompress_into(payload, pages, memoryview(out), runs)
    assert out[PAGE : 2 * PAGE] == b"\xee" * PAGE
    with pytest.raises(CodecError, match="unusable after an earlier error"):
        fast.decompress(get_codec("zlib").new_compressor(1).compress(bytes(PAGE)), 1)
    _module_zlib(monkeypatch)
    slow = get_codec("zlib").new_decompressor(channel=3)
    assert not slow._fast  # type: ignore[attr-defined]
    with pytest.raises(CodecError) as want:
        slow.decompress(payload, pages)
    assert type(got.value) is type(want.value)
    assert str(got.value).split(" (")[0] == str(want.value).split(" (")[0]


def test_zlib_module_fallback_still_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    _module_zlib(monkeypatch)
    comp, dec = get_codec("zlib").new_compressor(1), get_codec("zlib").new_decompressor()
    assert not comp._fast and not dec._fast  # type: ignore[attr-defined]
    for pk in _zlib_packets():
        out = bytearray(len(pk) + PAGE)
        dec.decompress_into(comp.compress_view(pk), len(pk) // PAGE, memoryview(out),
                            [(PAGE, len(pk) + PAGE)])
        assert out[PAGE:] == pk
