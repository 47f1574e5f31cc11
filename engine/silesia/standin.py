"""Deterministic Silesia stand-in (``silesia-standin v1``).

Twelve files with Silesia's names and exact sizes, each produced by a small generative model of
its file's kind of content (English prose, Webster HTML, PDF content streams, tarred C source,
DBLP-like XML, MDL SD-file molecules, MyISAM-like rows, binary star records, x86 code, MR and
X-ray images). One knob per file (``KNOBS``) was calibrated by measurement so that zlib level 9
on the stand-in matches the published ``gzip --best`` ratio of the real file
(``benchmarks/bench_standin.py --calibrate``).

Byte-identical everywhere: all randomness comes from the raw 64-bit output of numpy's PCG64
(a fixed algorithm, seeded through ``SeedSequence``) and from ``random.Random`` with string seeds;
every value is derived with integer arithmetic only (no libm, no float formatting).

Each file is made of independent 1 MiB segments (``SEGMENT``), segment *i* seeded by
``(file, i)``, so the first N bytes of a file never depend on N, any segment can be made on
its own, and files can be streamed lazily:

* :func:`generate_file` (``name, limit=None``) -> bytes of the file (or its first ``limit``);
* :func:`iter_file` (``name, limit=None``) -> segments;
* :func:`write_corpus` (``directory, limit=None``) -> the 12 files on disk.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import CorpusError
from .manifest import SILESIA_BY_NAME, SILESIA_NAMES

GENERATOR_NAME = "silesia-standin"
GENERATOR_VERSION = 1
#: The corpus name every result carries when it used this generator.
CORPUS_NAME = f"stand-in ({GENERATOR_NAME} v{GENERATOR_VERSION})"
SEGMENT = 1 << 20

_U64 = np.uint64
_PR = 1 << 16  # probabilities and knobs are integers over 65536

#: One calibrated knob per file (integer, model-specific meaning; see each model).
KNOBS: dict[str, int] = {
    "dickens": 21807,
    "mozilla": 30274,
    "mr": 214,
    "nci": 29329,
    "ooffice": 6439,
    "osdb": 3044,
    "reymont": 38091,
    "samba": 37976,
    "sao": 55808,
    "webster": 19235,
    "xml": 58130,
    "x-ray": 193,
}


# --------------------------------------------------------------------------------------------
# randomness


class _Rand:
    """Integer-only draws from the raw PCG64 stream of one (file, segment)."""

    def __init__(self, name: str, segment: int, stream: int = 0) -> None:
        digest = hashlib.sha256(f"{GENERATOR_NAME}/{GENERATOR_VERSION}/{name}".encode()).digest()
        key = int.from_bytes(digest[:8], "little")
        self._bg = np.random.PCG64(np.random.SeedSequence([key, segment, stream]))

    def raw(self, n: int) -> np.ndarray:
        return self._bg.random_raw(n)

    def below(self, n: int, hi: int) -> np.ndarray:
        """``n`` uniform integers in ``[0, hi)`` (``hi < 2**32``) as int64."""
        return (((self.raw(n) >> _U64(32)) * _U64(hi)) >> _U64(32)).astype(np.int64)

    def between(self, n: int, lo: int, hi: int) -> np.ndarray:
        """``n`` uniform integers in ``[lo, hi]``."""
        return self.below(n, hi - lo + 1) + lo

    def chance(self, n: int, p: int) -> np.ndarray:
        """Booleans true with probability ``p / 65536``."""
        return (self.raw(n) & _U64(0xFFFF)) < _U64(p)

    def pick(self, n: int, table: np.ndarray) -> np.ndarray:
        """Indices drawn from a ``_table`` (an inverse-CDF lookup of 2**20 entries)."""
        return table[self.raw(n) >> _U64(65 - table.size.bit_length())]

    def bytes(self, n: int) -> np.ndarray:
        return self.raw((n + 7) // 8).view(np.uint8)[:n]


def _table(weights: np.ndarray) -> np.ndarray:
    """Inverse-CDF lookup table for integer ``weights``: a draw is one index into it.

    2**20 entries for large distributions, 2**12 for small ones (stays in cache).
    """
    cdf = np.cumsum(np.asarray(weights, dtype=np.uint64), dtype=np.uint64)
    bits = 20 if len(cdf) > 256 else 12
    step = cdf[-1] >> _U64(bits)
    points = np.arange(1 << bits, dtype=np.uint64) * step + (step >> _U64(1))
    return np.minimum(np.searchsorted(cdf, points, side="right"), len(cdf) - 1).astype(np.int32)


def _zipf_weights(n: int, q: int) -> np.ndarray:
    """Integer Zipf-Mandelbrot weights ``2**40 / (k + q)``."""
    return (_U64(1 << 40) // (np.arange(n, dtype=np.uint64) + _U64(q))) + _U64(1)


@functools.cache
def _zipf_cdf(n: int, q: int) -> np.ndarray:
    """Draw table for Zipf-Mandelbrot ranks ``0..n-1`` with offset ``q``."""
    return _table(_zipf_weights(n, q))


@functools.cache
def _weights_cdf(weights: tuple[int, ...]) -> np.ndarray:
    return _table(np.asarray(weights, dtype=np.uint64))


# --------------------------------------------------------------------------------------------
# token pools: many small byte strings, assembled with numpy fancy-indexing


class _Pool:
    """A list of byte tokens; ``assemble(ids)`` concatenates tokens without a Python loop."""

    def __init__(self) -> None:
        self._tokens: list[bytes] = []
        self._index: dict[bytes, int] = {}
        self.flat = np.zeros(0, np.uint8)
        self.starts = np.zeros(0, np.int64)
        self.lens = np.zeros(0, np.int64)

    def add(self, token: bytes) -> int:
        got = self._index.get(token)
        if got is None:
            got = self._index[token] = len(self._tokens)
            self._tokens.append(token)
        return got

    def add_all(self, tokens: list[bytes]) -> np.ndarray:
        return np.asarray([self.add(t) for t in tokens], dtype=np.int64)

    def freeze(self) -> _Pool:
        self.flat = np.frombuffer(b"".join(self._tokens), dtype=np.uint8)
        self.lens = np.asarray([len(t) for t in self._tokens], dtype=np.int32)
        self.starts = (np.cumsum(self.lens, dtype=np.int64) - self.lens).astype(np.int32)
        return self

    def assemble(self, ids: np.ndarray) -> np.ndarray:
        lens = self.lens[ids]
        ends = np.cumsum(lens, dtype=np.int32)  # a segment is far below 2**31 bytes
        total = int(ends[-1]) if len(ends) else 0
        idx = np.repeat(self.starts[ids] - (ends - lens), lens)
        idx += np.arange(total, dtype=np.int32)
        return self.flat[idx]


def _reuse(rand: _Rand, ids: np.ndarray, share: int, lo: int, hi: int, dmax: int) -> np.ndarray:
    """Make about ``share/65536`` of the tokens copies of earlier token runs (LZ-style).

    A run of ``lo..hi`` tokens is copied from ``hi..dmax`` tokens back: recent-phrase reuse, as
    in real text and code. Copies of copies are resolved by pointer jumping (every source lies
    before its target), so the output really repeats itself, without a Python loop.
    """
    n = len(ids)
    if share <= 0 or n < 2 * hi:
        return ids
    m = max(1, (n * share) // (_PR * ((lo + hi) // 2)))
    starts = np.sort(rand.below(m, n - hi)).astype(np.int32)
    lens = rand.between(m, lo, hi).astype(np.int32)
    lens = np.minimum(lens, np.diff(starts, append=np.int32(n)))  # runs never overlap
    src = starts - rand.between(m, hi, dmax).astype(np.int32)
    ok = (src >= 0) & (lens > 0)
    starts, lens, src = starts[ok], lens[ok], src[ok]
    if not len(starts):
        return ids
    off = np.arange(int(lens.sum()), dtype=np.int32) - np.repeat(np.cumsum(lens) - lens, lens)
    tgt = np.repeat(starts, lens) + off
    cur = np.repeat(src, lens) + off
    idx = np.arange(n, dtype=np.int32)
    idx[tgt] = cur
    while True:
        nxt = idx[cur]
        if np.array_equal(nxt, cur):
            break
        idx[tgt] = nxt
        cur = nxt
    return ids[idx]


def _interleave(*columns: np.ndarray) -> np.ndarray:
    return np.stack(columns, axis=1).ravel()


# --------------------------------------------------------------------------------------------
# word models

_CONS = ["b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "th",
         "st", "ch", "sh", "wh", "br", "gr", "tr", "pl", "k", "y", "ng", "nd", "rt", "ll"]
_VOW = ["a", "e", "i", "o", "u", "ea", "ou", "ie", "ai", "ee", "oo", "y", "e", "a", "o"]
_PL_CONS = ["b", "c", "d", "g", "k", "l", "m", "n", "p", "r", "s", "t", "w", "z", "cz", "sz",
            "rz", "dz", "ch", "\\263", "\\346", "\\361", "\\277", "\\234", "j", "st", "pr", "kr"]
_PL_VOW = ["a", "e", "i", "o", "u", "y", "ie", "ia", "\\352", "\\261", "\\363", "o", "a", "e"]


def _make_words(rng: random.Random, n: int, cons: list[str], vow: list[str]) -> list[bytes]:
    """``n`` distinct pseudo-words, shorter ones first (rank 0 is the most frequent)."""
    seen: set[str] = set()
    words: list[str] = []
    while len(words) < n:
        syl = 1 + min(rng.randrange(5), rng.randrange(5))
        w = "".join(rng.choice(cons) + rng.choice(vow) for _ in range(syl))
        if rng.randrange(3) == 0:
            w += rng.choice(cons)
        if w not in seen:
            seen.add(w)
            words.append(w)
    words.sort(key=lambda w: (len(w) + rng.randrange(4), w))
    return [w.encode("latin-1") for w in words]


class _Prose:
    """Word/separator token streams over a Zipf vocabulary (shared by the text models)."""

    def __init__(
        self, seed: str, n_words: int, q: int, polish: bool = False, extra: tuple[bytes, ...] = ()
    ) -> None:
        rng = random.Random(seed)
        cons, vow = (_PL_CONS, _PL_VOW) if polish else (_CONS, _VOW)
        words = _make_words(rng, n_words, cons, vow)
        self.pool = _Pool()
        self.words = self.pool.add_all(words)
        caps = [w[:1].upper() + w[1:] for w in words[:2000]]
        self.caps = self.pool.add_all(caps)
        seps = [b" ", b", ", b". ", b"; ", b"\n", b".\n\n", b" ", b"! ", b"? ", b"\"", b" -- "]
        self.seps = self.pool.add_all(seps)
        self.sep_cdf = _weights_cdf((700, 70, 45, 8, 110, 10, 0, 3, 3, 6, 4))
        self.word_cdf = _zipf_cdf(n_words, q)
        self.cap_cdf = _zipf_cdf(len(caps), q)
        self.extra = {t: self.pool.add(t) for t in extra}
        self.pool.freeze()
        self.ends_sentence = np.zeros(len(self.pool.lens), dtype=bool)
        self.ends_sentence[self.seps[[2, 5, 7, 8]]] = True

    def stream(self, rand: _Rand, n_words: int) -> np.ndarray:
        """Token ids: word, separator, word, ... (capitals after sentence ends)."""
        w = self.words[rand.pick(n_words, self.word_cdf)]
        s = self.seps[rand.pick(n_words, self.sep_cdf)]
        sentence_end = self.ends_sentence[s]
        after = np.flatnonzero(sentence_end[:-1]) + 1
        w[after] = self.caps[rand.pick(len(after), self.cap_cdf)]
        return _interleave(w, s)


# --------------------------------------------------------------------------------------------
# the twelve models: each ``_gen_<file>(rand, need, knob)`` returns about ``need`` bytes


@functools.cache
def _english() -> _Prose:
    return _Prose("dickens", 30000, 3)


def _gen_dickens(rand: _Rand, need: int, knob: int) -> bytes:
    """Prose: Zipf words, punctuation, capitals; knob = share of recent-phrase reuse."""
    prose = _english()
    ids = prose.stream(rand, need * 5 // 24 + 64)
    ids = _reuse(rand, ids, knob, 4, 24, 4000)
    return prose.pool.assemble(ids).tobytes()


_POS = (b"n.", b"v. t.", b"v. i.", b"a.", b"adv.", b"n. pl.", b"prep.", b"p. p.")


@functools.cache
def _webster_prose() -> _Prose:
    extra = (b"</def></p>\n\n<p><hw>", b"</hw> <pr>(", b")</pr>, <pos>", b"</pos> <def>",
             b"</def><br/\n[<source>1913 Webster</source>]<br/\n<def>", b"<sn>1.</sn> ",
             b"</def> <i>", b"</i> <def>", *_POS)
    return _Prose("webster", 40000, 3, extra=extra)


def _gen_webster(rand: _Rand, need: int, knob: int) -> bytes:
    """HTML dictionary entries ``<p><hw>..</hw> <pr>..</pr>, <pos>..</pos> <def>..``."""
    p = _webster_prose()
    e = p.extra
    body = p.stream(rand, need * 5 // 24 + 64)
    n_entries = max(1, len(body) // 40)
    pos = np.sort(rand.below(n_entries, len(body) // 2)) * 2
    hw = p.words[rand.pick(n_entries, p.word_cdf)]
    head = _interleave(
        np.full(n_entries, e[b"</def></p>\n\n<p><hw>"]), hw, np.full(n_entries, e[b"</hw> <pr>("]),
        hw, np.full(n_entries, e[b")</pr>, <pos>"]),
        np.asarray([e[x] for x in _POS])[rand.below(n_entries, len(_POS))],
        np.full(n_entries, e[b"</pos> <def>"]))
    ids = np.insert(body, np.repeat(pos, 7), head)
    ids = _reuse(rand, ids, knob, 4, 24, 4000)
    return p.pool.assemble(ids).tobytes()


@functools.cache
def _polish_prose() -> _Prose:
    rng = random.Random("reymont-pages")
    pages = tuple(
        (f") Tj\nET\nendstream\nendobj\n{n} 0 obj\n<< /Length {rng.randrange(2000, 6000)} >>\n"
         f"stream\nBT\n/F1 10.{rng.randrange(10, 99)} Tf\n72 {rng.randrange(600, 760)} Td\n("
         ).encode() for n in range(5, 400, 3))
    extra = (b") Tj\n0 -12.5 TD\n(", b") Tj\nT*\n(", *pages)
    return _Prose("reymont", 25000, 3, polish=True, extra=extra)


def _gen_reymont(rand: _Rand, need: int, knob: int) -> bytes:
    """Uncompressed PDF content streams of Polish text (octal escapes for diacritics)."""
    p = _polish_prose()
    body = p.stream(rand, need * 5 // 24 + 64)
    n_lines = len(body) // 22
    pos = np.sort(rand.below(n_lines, len(body) // 2)) * 2
    brk = np.asarray([p.extra[b") Tj\n0 -12.5 TD\n("], p.extra[b") Tj\nT*\n("]])
    vals = brk[rand.below(n_lines, 2)]
    page_ids = np.asarray(list(p.extra.values())[2:])
    page = rand.chance(n_lines, 1800)
    vals[page] = page_ids[rand.below(int(page.sum()), len(page_ids))]
    ids = np.insert(body, pos, vals)
    ids = _reuse(rand, ids, knob, 4, 24, 4000)
    return p.pool.assemble(ids).tobytes()


def _tar_member(name: bytes, data: bytes, mtime: int, uname: bytes = b"root") -> bytes:
    """One ustar member (512-byte header, data, NUL padding to 512)."""
    h = bytearray(512)
    h[0:len(name[:99])] = name[:99]
    h[100:108] = b"0000644\0"
    h[108:116] = b"0001750\0"
    h[116:124] = b"0000144\0"
    h[124:136] = b"%011o\0" % len(data)
    h[136:148] = b"%011o\0" % mtime
    h[148:156] = b" " * 8
    h[156:157] = b"0"
    h[257:265] = b"ustar  \0"
    h[265:265 + len(uname)] = uname
    h[297:297 + len(uname)] = uname
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h) + data + b"\0" * (-len(data) % 512)


_C_SYNTAX = [
    (b"(", 60), (b")", 50), (b";\n\t", 40), (b" = ", 30), (b", ", 45), (b"->", 25),
    (b"\n\t", 20), (b") {\n\t\t", 12), (b"\n\t}\n", 10), (b"if (", 14), (b"return ", 10),
    (b"DEBUG(3,(\"", 6), (b"\\n\"));\n\t", 6), (b"/* ", 5), (b" */\n\t", 5), (b"int ", 10),
    (b"char *", 8), (b"static ", 6), (b"NULL", 10), (b"0", 10), (b"1", 6), (b" == ", 8),
    (b" != ", 6), (b"&", 6), (b"struct ", 8), (b"size_t ", 3), (b"BOOL ", 5), (b"True", 4),
    (b"False", 4), (b"}\n\n", 4), (b"\n{\n\t", 4), (b"for (i=0;i<", 3), (b";i++) {\n\t\t", 3),
    (b"pstrcpy(", 3), (b"fstring ", 3), (b"#include \"", 2), (b".h\"\n", 2), (b"else ", 4),
    (b"goto done;\n\t", 1), (b" + ", 5), (b" - ", 3), (b"[", 5), (b"]", 5), (b" < ", 3),
    (b" > ", 2), (b" && ", 4), (b" || ", 3), (b"!", 4), (b"%s", 4), (b"%d", 3),
    (b"sizeof(", 3), (b"uint32 ", 4), (b"uint16 ", 2), (b"\t", 10), (b"* ", 3),
]
_C_PREFIX = ["smb", "cli", "srv", "nt", "rpc", "lp", "file", "conn", "talloc", "str", "fsp",
             "pipe", "tdb", "sec", "unix", "dos", "acl", "name", "pdb", "msg", "nmb", "wins"]


@functools.cache
def _c_pool() -> tuple[_Pool, np.ndarray, np.ndarray, list[bytes]]:
    rng = random.Random("samba")
    words = _make_words(rng, 3000, _CONS, _VOW)
    idents = []
    for i in range(6000):
        w = words[i % len(words)].decode()
        if i % 3:
            w = f"{rng.choice(_C_PREFIX)}_{w}"
        if i % 5 == 0:
            w += "_" + words[rng.randrange(300)].decode()
        idents.append(w.encode())
    pool = _Pool()
    ids = pool.add_all(idents)
    syn = pool.add_all([t for t, _ in _C_SYNTAX])
    tok = np.concatenate([ids, syn])
    w_id = _zipf_weights(len(ids), 4) * _U64(45)
    total_id = int(w_id.sum())
    syn_w = np.asarray([w for _, w in _C_SYNTAX], dtype=np.uint64)
    syn_w = syn_w * _U64(total_id * 55 // (45 * int(syn_w.sum())))
    cdf = _table(np.concatenate([w_id, syn_w]))
    pool.freeze()
    names = [f"{rng.choice(_C_PREFIX)}/{w.decode()}.c".encode() for w in words[:400]]
    return pool, tok, cdf, names


def _gen_samba(rand: _Rand, need: int, knob: int) -> bytes:
    """Tar of generated C source; knob = share of recent-phrase reuse."""
    pool, tok, cdf, names = _c_pool()
    ids = tok[rand.pick(need * 5 // 26 + 64, cdf)]
    ids = _reuse(rand, ids, knob, 3, 40, 6000)
    code = pool.assemble(ids).tobytes()
    out = []
    size = 0
    at = 0
    sizes = rand.between(64, 1500, 60000).tolist()
    picks = rand.below(64, len(names)).tolist()
    i = 0
    while size < need and at < len(code):
        n = sizes[i % 64]
        member = _tar_member(b"samba-2.2.3a/source/" + names[picks[i % 64]], code[at:at + n],
                             1012345678 + 97 * i)
        out.append(member)
        size += len(member)
        at += n
        i += 1
    return b"".join(out)


@functools.cache
def _xml_pool() -> tuple[_Pool, dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = random.Random("xml")
    words = _make_words(rng, 12000, _CONS, _VOW)
    pool = _Pool()
    f: dict[str, np.ndarray] = {}
    cdf: dict[str, np.ndarray] = {}
    f["last"] = pool.add_all([w[:1].upper() + w[1:] for w in words[3000:7000]])
    cdf["last"] = _zipf_cdf(4000, 10)
    f["first"] = pool.add_all([w[:1].upper() + w[1:] for w in words[:300]])
    cdf["first"] = _zipf_cdf(300, 5)
    f["tw"] = pool.add_all([w + b" " for w in words[:8000]] + [b""])
    tw = _zipf_weights(8000, 3)
    cdf["tw"] = _table(np.append(tw, tw.sum() // _U64(2)))  # a third empty: variable titles
    jn = [b"".join(w[:1].upper() + w[1:] + b" " for w in rng.sample(words[:2000], 3)).strip()
          for _ in range(60)]
    f["jname"] = pool.add_all(jn)
    f["jkey"] = pool.add_all([b"".join(w[:1] for w in j.lower().split()) + b"x" for j in jn])
    cdf["j"] = _zipf_cdf(60, 2)
    f["num"] = pool.add_all([str(i).encode() for i in range(1, 1000)])
    cdf["num"] = _zipf_cdf(999, 8)
    f["year"] = pool.add_all([str(y).encode() for y in range(1960, 2003)])
    f["yy"] = pool.add_all([str(y)[2:].encode() for y in range(1960, 2003)])
    f["date"] = pool.add_all([f"2002-{m:02d}-{d:02d}".encode() for m in (1, 2, 3, 11, 12)
                              for d in range(1, 29)])
    f["lit"] = pool.add_all([
        b'<article mdate="', b'" key="journals/', b"/", b'">\n<author>', b" ",
        b"</author>\n<author>", b"</author>\n<title>", b".</title>\n<pages>", b"-",
        b"</pages>\n<year>", b"</year>\n<volume>", b"</volume>\n<journal>",
        b"</journal>\n<number>", b"</number>\n<url>db/journals/", b".html#",
        b"</url>\n</article>\n"])
    pool.freeze()
    return pool, f, cdf


def _gen_xml(rand: _Rand, need: int, knob: int) -> bytes:
    """DBLP-like bibliographic records; knob = share of recent-phrase reuse."""
    pool, f, cdf = _xml_pool()
    m = need // 330 + 4
    lit = f["lit"]

    def c(i: int) -> np.ndarray:
        return np.full(m, lit[i])

    j = rand.pick(m, cdf["j"])
    year = rand.below(m, len(f["year"]))
    last1 = f["last"][rand.pick(m, cdf["last"])]
    cols = [c(0), f["date"][rand.below(m, len(f["date"]))], c(1), f["jkey"][j], c(2), last1,
            f["yy"][year], c(3), f["first"][rand.pick(m, cdf["first"])], c(4), last1, c(5),
            f["first"][rand.pick(m, cdf["first"])], c(4), f["last"][rand.pick(m, cdf["last"])],
            c(6)]
    cols += [f["tw"][rand.pick(m, cdf["tw"])] for _ in range(9)]
    num = f["num"]
    cols += [c(7), num[rand.pick(m, cdf["num"])], c(8), num[rand.pick(m, cdf["num"])], c(9),
             f["year"][year], c(10), num[rand.pick(m, cdf["num"])], c(11), f["jname"][j],
             c(12), num[rand.pick(m, cdf["num"])], c(13), f["jkey"][j], c(2), f["jkey"][j],
             num[rand.pick(m, cdf["num"])], c(14), last1, f["yy"][year], c(15)]
    ids = _reuse(rand, _interleave(*cols), knob, 3, 30, 3000)
    return pool.assemble(ids).tobytes()


def _fmt_fixed(v: np.ndarray, width: int, decimals: int) -> np.ndarray:
    """Right-aligned ``%{width}.{decimals}f`` of integers ``v`` (units of 10**-decimals)."""
    n = len(v)
    out = np.full((n, width), ord(" "), dtype=np.uint8)
    a = np.abs(v)
    neg = v < 0
    for k in range(decimals):
        out[:, width - 1 - k] = 48 + (a // 10**k) % 10
    out[:, width - 1 - decimals] = ord(".")
    ip = a // 10**decimals
    col = width - 2 - decimals
    out[:, col] = 48 + ip % 10
    for k in range(1, width - decimals - 1):
        more = ip >= 10**k
        out[:, col - k] = np.where(more, 48 + (ip // 10**k) % 10, out[:, col - k])
        sign_here = neg & (ip < 10**k) & ((ip >= 10 ** (k - 1)) | (k == 1))
        out[:, col - k] = np.where(sign_here, ord("-"), out[:, col - k])
    return out


def _fmt_int(v: np.ndarray, width: int) -> np.ndarray:
    """Right-aligned ``%{width}d`` of non-negative integers."""
    out = np.full((len(v), width), ord(" "), dtype=np.uint8)
    for k in range(width):
        digit = 48 + (v // 10**k) % 10
        out[:, width - 1 - k] = np.where((v >= 10**k) | (k == 0), digit, ord(" "))
    return out


_ELEMENTS = [(b"C  ", 60), (b"O  ", 14), (b"N  ", 12), (b"H  ", 4), (b"S  ", 3), (b"Cl ", 3),
             (b"P  ", 1), (b"F  ", 1), (b"Br ", 1), (b"Na ", 1)]
_COMMON_COORD = np.asarray([0, 7500, -7500, 12990, -12990, 15000, -15000, 25981, -25981,
                            30000, -30000, 22500, -22500, 38971, 5196, 4330, -4330, 8660,
                            -8660, 17321, 20000, -20000, 34641, 45000, 51962, -6000, 6000],
                           dtype=np.int64)


def _gen_nci(rand: _Rand, need: int, knob: int) -> bytes:
    """MDL SD-file molecules; knob = chance (/65536) that a coordinate is not a ring value."""
    m = need // 1500 + 4
    na = rand.between(m, 6, 34)
    nb = na + rand.between(m, -1, 2)
    a_total, b_total = int(na.sum()), int(nb.sum())
    coords = _COMMON_COORD[rand.below(2 * a_total, len(_COMMON_COORD))]
    coords += rand.below(2 * a_total, 4) * 12990  # layouts spread over a few ring widths
    fresh = rand.chance(2 * a_total, knob)
    coords[fresh] = rand.between(int(fresh.sum()), -60000, 60000)
    atoms = np.full((a_total, 70), ord(" "), dtype=np.uint8)
    atoms[:, 0:10] = _fmt_fixed(coords[:a_total], 10, 4)
    atoms[:, 10:20] = _fmt_fixed(coords[a_total:], 10, 4)
    atoms[:, 20:30] = np.frombuffer(b"    0.0000", np.uint8)
    el = np.frombuffer(b"".join(e for e, _ in _ELEMENTS), np.uint8).reshape(-1, 3)
    atoms[:, 31:34] = el[rand.pick(a_total, _weights_cdf(tuple(w for _, w in _ELEMENTS)))]
    atoms[:, 34:69] = np.frombuffer(b" 0  0  0  0  0  0  0  0  0  0  0  0", np.uint8)
    atoms[:, 69] = 10
    # bonds: atom i to i+1 mostly, ring closures and branches now and then
    local = np.arange(b_total) - np.repeat(np.cumsum(nb) - nb, nb)
    nam = np.repeat(na, nb)
    a1 = np.minimum(local % nam + 1, nam)
    a2 = np.where(rand.chance(b_total, 9000), rand.between(b_total, 1, 6), a1 + 1)
    a2 = np.where(a2 > nam, 1, a2)
    bonds = np.full((b_total, 22), ord(" "), dtype=np.uint8)
    bonds[:, 0:3] = _fmt_int(a1, 3)
    bonds[:, 3:6] = _fmt_int(a2, 3)
    bonds[:, 6:9] = _fmt_int(1 + (rand.below(b_total, 8) == 0), 3)
    bonds[:, 9:21] = np.frombuffer(b"  0  0  0  0", np.uint8)
    bonds[:, 21] = 10
    ab, bb = atoms.tobytes(), bonds.tobytes()
    nsc = (rand.below(m, 700000) + 1).tolist()
    day = rand.below(m, 28).tolist()
    out = []
    a0 = b0 = 0
    for i, (a, b) in enumerate(zip(na.tolist(), nb.tolist(), strict=True)):
        out.append(b"%d\n  -OEMOL-06%02d0212152D\n\n%3d%3d  0  0  0  0  0  0  0  0999 V2000\n"
                   % (nsc[i], day[i] + 1, a, b))
        out.append(ab[a0 * 70:(a0 + a) * 70])
        out.append(bb[b0 * 22:(b0 + b) * 22])
        out.append(b"M  END\n> <NSC>\n%d\n\n$$$$\n" % nsc[i])
        a0 += a
        b0 += b
    return b"".join(out)


@functools.cache
def _osdb_pools() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = random.Random("osdb")
    words = _make_words(rng, 3000, _CONS, _VOW)
    names = np.frombuffer(b"".join(
        (w[:1].upper() + w[1:] + b" " + rng.choice(words[:500]))[:20].ljust(20)
        for w in words[:600]), np.uint8).reshape(-1, 20)
    text = np.frombuffer(b"".join(
        b" ".join(rng.sample(words[:1500], 4))[:30].ljust(30) for _ in range(3000)),
        np.uint8).reshape(-1, 30)
    doubles = np.asarray([(0x408F400000000000 + (rng.randrange(1 << 12) << 40)) for _ in
                          range(200)], dtype=np.uint64).view(np.uint8).reshape(-1, 8)
    return names, text, doubles


def _gen_osdb(rand: _Rand, need: int, knob: int) -> bytes:
    """Fixed 92-byte MyISAM-like rows; knob = chance (/65536) of a fresh random field."""
    names, text, doubles = _osdb_pools()
    m = need // 92 + 1
    rows = np.zeros((m, 92), dtype=np.uint8)
    base = int(rand.below(1, 1 << 24)[0])
    rows[:, 0:4] = (np.arange(m, dtype=np.uint32) + np.uint32(base)).view(np.uint8).reshape(m, 4)
    rows[:, 4:8] = rand.pick(m, _zipf_cdf(5000, 10)).astype(np.uint32).view(np.uint8).reshape(
        m, 4)
    rows[:, 8:28] = names[rand.pick(m, _zipf_cdf(len(names), 20))]
    yr = rand.between(m, 1990, 2001)
    mo = rand.between(m, 1, 12)
    dy = rand.between(m, 1, 28)
    date = np.frombuffer(b"0000-00-00", np.uint8)[None, :].repeat(m, 0).copy()
    for col, val, width in ((0, yr, 4), (5, mo, 2), (8, dy, 2)):
        for k in range(width):
            date[:, col + width - 1 - k] = 48 + (val // 10**k) % 10
    rows[:, 28:38] = date
    rows[:, 38:46] = doubles[rand.below(m, len(doubles))]
    fresh = rand.chance(m, knob)
    rows[fresh, 40:46] = rand.bytes(int(fresh.sum()) * 6).reshape(-1, 6)
    small = rand.below(m, 1 << 12).astype(np.uint32)
    big = rand.raw(m).astype(np.uint32)
    rows[:, 46:50] = np.where(rand.chance(m, knob), big, small).view(np.uint8).reshape(m, 4)
    rows[:, 50:80] = text[rand.pick(m, _zipf_cdf(len(text), 30))]
    ctr = np.stack([rand.below(m, 100), rand.below(m, 1000), rand.below(m, 1 << 10)], 1)
    rows[:, 80:92] = ctr.astype(np.uint32).view(np.uint8).reshape(m, 12)
    return rows.tobytes()


def _gen_sao(rand: _Rand, need: int, knob: int) -> bytes:
    """28-byte binary star records (RA/Dec doubles, type, magnitude, proper motions).

    knob = chance (/65536) that a proper motion is catalogued with 7 instead of 23 bits.
    """
    m = need // 28 + 1
    rec = np.zeros((m, 28), dtype=np.uint8)
    step = rand.below(m, 1 << 22).astype(np.uint64)
    ra_hi = np.cumsum(step, dtype=np.uint64) + _U64(int(rand.below(1, 1 << 30)[0]) << 20)
    ra = (_U64(0x4000000000000000) | ((ra_hi << _U64(8)) & _U64((1 << 52) - 1))
          ) ^ (rand.raw(m) & _U64((1 << 30) - 1))
    rec[:, 0:8] = ra.view(np.uint8).reshape(m, 8)
    dec = (rand.raw(m) & _U64((1 << 52) - 1)) | (
        (_U64(0x3FC) + rand.below(m, 4).astype(np.uint64)) << _U64(52)) | (
        (rand.raw(m) & _U64(1)) << _U64(63))
    rec[:, 8:16] = dec.view(np.uint8).reshape(m, 8)
    spec = np.frombuffer(b"K0G5A0F8B9M0K5G0A2F5B5K2", np.uint8).reshape(-1, 2)
    rec[:, 16:18] = spec[rand.pick(m, _zipf_cdf(len(spec), 1))]
    rec[:, 18:20] = (rand.pick(m, _zipf_cdf(1200, 200)) + 300).astype(np.uint16).view(
        np.uint8).reshape(m, 2)
    for col in (20, 24):
        mant = rand.raw(m) & _U64((1 << 23) - 1)
        coarse = rand.chance(m, knob)
        mant[coarse] &= _U64(0x700000)
        exp = (_U64(113) + rand.below(m, 8).astype(np.uint64)) << _U64(23)
        sign = (rand.raw(m) & _U64(1)) << _U64(31)
        rec[:, col:col + 4] = (mant | exp | sign).astype(np.uint32).view(np.uint8).reshape(m, 4)
    return rec.tobytes()


def _x86_instructions(rng: random.Random, n: int) -> tuple[list[bytes], list[int]]:
    """``n`` concrete x86-32 instructions (most frequent first) and their 4-byte hole offset.

    The hole (-1 if none) holds a rel32/imm32/disp32 that gets fresh random bytes at a
    knob-controlled rate when the instruction is emitted.
    """
    regs = list(range(8))
    shapes = [  # (weight, builder)
        (18, lambda: (bytes([0x8B, 0x45 + 8 * rng.choice(regs[:4]), rng.choice(
            [0x08, 0x0C, 0x10, 0xF8, 0xFC, 0xF4, 0xF0, 0x14])]), -1)),
        (10, lambda: (bytes([0x89, 0x45 + 8 * rng.choice(regs[:4]), rng.choice(
            [0xF8, 0xFC, 0xF4, 0xF0, 0xEC, 0xE8])]), -1)),
        (9, lambda: (bytes([0x50 + rng.choice(regs)]), -1)),
        (5, lambda: (bytes([0x58 + rng.choice(regs)]), -1)),
        (9, lambda: (b"\xe8" + rng.randbytes(4), 1)),
        (8, lambda: (bytes([rng.choice([0x74, 0x75, 0xEB, 0x7C, 0x7E]), rng.randrange(2, 90)]),
                     -1)),
        (5, lambda: (bytes([0x8D, 0x45 + 8 * rng.choice(regs[:4]), rng.randrange(0xC0, 0x100)]),
                     -1)),
        (6, lambda: (bytes([0x83, rng.choice([0xC4, 0xEC, 0x7D, 0xF8, 0xE0]),
                            rng.choice([4, 8, 12, 16, 0, 1, 0x20])]), -1)),
        (5, lambda: (bytes([0x85, 0xC0 + rng.randrange(64)]), -1)),
        (3, lambda: (bytes([0x33, 0xC0 + 9 * rng.randrange(8)]), -1)),
        (2, lambda: (b"\xc3", -1)),
        (5, lambda: (bytes([0xB8 + rng.choice(regs)]) + rng.randbytes(4), 1)),
        (4, lambda: (bytes([0x0F, rng.choice([0x84, 0x85, 0x8C, 0x8E])]) + rng.randbytes(4), 2)),
        (4, lambda: (bytes([0x8B, 0x85 + 8 * rng.choice(regs[:4])]) + rng.randbytes(4), 2)),
        (3, lambda: (b"\xff\x15" + rng.randbytes(4), 2)),
        (3, lambda: (bytes([0xC7, 0x45, rng.randrange(0xD0, 0x100)]) + rng.randbytes(4), 3)),
        (2, lambda: (bytes([0x3B, 0xC0 + rng.randrange(64)]), -1)),
        (2, lambda: (bytes([0x8B, 0xC0 + rng.randrange(64)]), -1)),
        (1, lambda: (b"\x90", -1)),
    ]
    weights = [w for w, _ in shapes]
    out: list[bytes] = []
    holes: list[int] = []
    seen: set[bytes] = set()
    while len(out) < n:
        ins, hole = rng.choices(shapes, weights)[0][1]()
        if ins not in seen:
            seen.add(ins)
            out.append(ins)
            holes.append(hole)
    return out, holes


@functools.cache
def _code_pool(kind: str) -> tuple[_Pool, np.ndarray, np.ndarray, dict[str, int], np.ndarray,
                                   np.ndarray]:
    """Instructions (Zipf), plus a pool of idioms: instruction runs of 12-160 bytes that recur
    in the stream (at near and far distances, by their own Zipf rank)."""
    rng = random.Random(f"code-{kind}")
    ins, holes = _x86_instructions(rng, 2500)
    pool = _Pool()
    ins_ids = pool.add_all(ins)
    special = {
        "prologue": pool.add(b"\x55\x8b\xec\x83\xec\x10\x53\x56\x57"),
        "epilogue": pool.add(b"\x5f\x5e\x5b\x8b\xe5\x5d\xc3"),
        "pad": pool.add(b"\xcc" * 9),
        "nop_pad": pool.add(b"\x8d\x49\x00\x8d\xa4\x24\x00\x00\x00\x00"),
    }
    ins_cdf = _zipf_cdf(len(ins), 12)
    rand = _Rand(f"idioms-{kind}", 0)
    n_idioms = 3000
    lengths = rand.between(n_idioms, 4, 40)
    flat = ins_ids[rand.pick(int(lengths.sum()), ins_cdf)]
    ends = np.cumsum(lengths)
    idioms = []
    for a, b in zip((ends - lengths).tolist(), ends.tolist(), strict=True):
        body = bytearray(b"".join(ins[i] for i in flat[a:b].tolist()))
        idioms.append(bytes(body))
    idiom_ids = np.asarray([pool.add(x) for x in idioms], dtype=np.int64)
    hole = np.full(pool.freeze().lens.shape, -1, dtype=np.int64)
    hole[: len(holes)] = holes
    return pool, ins_cdf, hole, special, idiom_ids, _zipf_cdf(n_idioms, 8)


def _code(rand: _Rand, kind: str, need: int, knob: int) -> np.ndarray:
    """x86-like code: Zipf instructions (half the rel32/imm32 operands fresh), recurring
    idioms, function prologues/epilogues and padding; knob = chance (/65536) that a token is
    an idiom rather than a single instruction."""
    pool, cdf, hole, special, idiom_ids, idiom_cdf = _code_pool(kind)
    n = need // 12 + 64
    ids = rand.pick(n, cdf)
    is_idiom = rand.chance(n, knob)
    ids[is_idiom] = idiom_ids[rand.pick(int(is_idiom.sum()), idiom_cdf)]
    n_funcs = max(1, len(ids) // 30)
    cut = np.sort(rand.below(n_funcs, len(ids)))
    fn = _interleave(np.full(n_funcs, special["epilogue"]),
                     np.where(rand.chance(n_funcs, 32768), special["pad"], special["nop_pad"]),
                     np.full(n_funcs, special["prologue"]))
    ids = np.insert(ids, np.repeat(cut, 3), fn)
    out = pool.assemble(ids)
    lens = pool.lens[ids]
    starts = np.cumsum(lens) - lens
    h = hole[ids]
    fresh = (h >= 0) & rand.chance(len(ids), 50000)
    at = starts[fresh] + h[fresh]
    if len(at):
        out[(at[:, None] + np.arange(4)).ravel()] = rand.bytes(4 * len(at))
    return out


@functools.cache
def _symbol_prose() -> _Prose:
    return _Prose("symbols", 12000, 4)


def _symbols(rand: _Rand, need: int, knob: int) -> bytes:
    """String/symbol tables: names and messages separated by NULs; knob = reuse share."""
    p = _symbol_prose()
    ids = p.stream(rand, need * 5 // 24 + 16)
    ids[1::2] = np.where(rand.chance(len(ids) // 2, 20000), p.seps[0], p.seps[4])
    ids = _reuse(rand, ids, knob, 4, 24, 4000)
    text = p.pool.assemble(ids).tobytes()
    return text.replace(b"\n", b"\0").replace(b" ", b"_")


def _gen_mozilla(rand: _Rand, need: int, knob: int) -> bytes:
    """Tar of ELF-like objects: x86-like code plus about a quarter symbol/string tables."""
    out = []
    size = 0
    i = 0
    sizes = rand.between(32, 20000, 200000).tolist()
    texts = rand.chance(32, 16384).tolist()
    while size < need:
        n = max(1024, min(sizes[i % 32], need - size))
        if texts[i % 32]:
            data = _symbols(rand, n, knob)[:n]
        else:
            data = b"\x7fELF\x01\x01\x01" + bytes(9) + _code(rand, "mozilla", n, knob).tobytes()
            data = data[:n]
        member = _tar_member(b"mozilla/lib/lib%d.so" % (i % 97), data, 1022000000 + i, b"moz")
        out.append(member)
        size += len(member)
        i += 1
    return b"".join(out)


def _gen_ooffice(rand: _Rand, need: int, knob: int) -> bytes:
    """PE/DLL-like image: x86-like code with import/string tables and zero-padded sections."""
    out = []
    size = 0
    while size < need:
        code = _code(rand, "ooffice", max(4096, min(200000, need - size)), knob).tobytes()
        strings = _symbols(rand, 12000, knob)[:12000]
        part = code + strings + bytes(int(rand.below(1, 2048)[0]))
        out.append(part)
        size += len(part)
    return b"".join(out)


def _gen_mr(rand: _Rand, need: int, knob: int) -> bytes:
    """16-bit LE 256x256 MR slices: an elliptical head on a zero background, smooth tissue
    plus noise; knob = noise amplitude in 1/16."""
    n = need // 131072 + 1
    y, x = np.mgrid[0:256, 0:256].astype(np.int64)
    out = []
    for _ in range(n):
        cx, cy = (int(v) for v in rand.between(2, 118, 138))
        a, b = (int(v) for v in rand.between(2, 78, 104))
        dx, dy = x - cx, y - cy
        r = (dx * dx * b * b + dy * dy * a * a) * 256 // (a * a * b * b)
        inside = r <= 256
        brain = r <= 170
        field = 260 + ((dx * int(rand.between(1, -3, 3)[0]) + dy * 2) >> 1)
        field = field + np.where(brain, 340 + ((256 - r) >> 1), 120)
        amp = (knob >> 4) + rand.chance(65536, (knob & 15) << 12)
        noise = ((rand.raw(65536) >> _U64(32)) * amp.astype(np.uint64) >> _U64(32)).astype(
            np.int64).reshape(256, 256)
        img = np.where(inside, field + noise, rand.below(65536, 6).reshape(256, 256))
        out.append(img.astype("<u2").tobytes())
    return b"".join(out)


def _gen_x_ray(rand: _Rand, need: int, knob: int) -> bytes:
    """12-bit-in-16 LE image 2048 wide: smooth exposure with bones and heavy noise."""
    rows = need // 4096 + 1
    y, x = np.mgrid[0:rows, 0:2048].astype(np.int64)
    y = y + int(rand.below(1, 4096)[0])
    field = 900 + (x * 600 >> 11) + ((y % 3000) * 300 // 3000)
    bone = ((x // 160) % 3 == 1) & ((y // 700) % 2 == 0)
    field = field + np.where(bone, 1400, 0)
    noise = rand.below(rows * 2048, knob).reshape(rows, 2048)
    img = np.minimum(field + noise, 4095)
    return img.astype("<u2").tobytes()


_MODELS: dict[str, Callable[[_Rand, int, int], bytes]] = {
    "dickens": _gen_dickens,
    "mozilla": _gen_mozilla,
    "mr": _gen_mr,
    "nci": _gen_nci,
    "ooffice": _gen_ooffice,
    "osdb": _gen_osdb,
    "reymont": _gen_reymont,
    "samba": _gen_samba,
    "sao": _gen_sao,
    "webster": _gen_webster,
    "xml": _gen_xml,
    "x-ray": _gen_x_ray,
}


# --------------------------------------------------------------------------------------------
# public API


def _check_name(name: str) -> int:
    if name not in SILESIA_BY_NAME:
        raise CorpusError(f"'{name}' is not a Silesia file (known: {', '.join(SILESIA_NAMES)})")
    return SILESIA_BY_NAME[name].size


def segment(name: str, index: int, knob: int | None = None) -> bytes:
    """Segment ``index`` of stand-in file ``name`` (``SEGMENT`` bytes, the last one shorter)."""
    size = _check_name(name)
    start = index * SEGMENT
    if index < 0 or start >= size:
        raise CorpusError(f"segment {index} is outside '{name}' ({size} bytes)")
    need = min(SEGMENT, size - start)
    rand = _Rand(name, index)
    k = KNOBS[name] if knob is None else knob
    data = _MODELS[name](rand, need, k)
    while len(data) < need:
        data += _MODELS[name](rand, need - len(data), k)
    return data[:need]


def iter_file(name: str, limit: int | None = None, knob: int | None = None) -> Iterator[bytes]:
    """Stream stand-in file ``name`` (or its first ``limit`` bytes) segment by segment."""
    size = _check_name(name)
    end = size if limit is None else max(0, min(limit, size))
    for i in range((end + SEGMENT - 1) // SEGMENT):
        data = segment(name, i, knob)
        yield data[: end - i * SEGMENT]


def generate_file(name: str, limit: int | None = None, knob: int | None = None) -> bytes:
    """The whole stand-in file ``name`` (or its first ``limit`` bytes)."""
    return b"".join(iter_file(name, limit, knob))


def file_size(name: str) -> int:
    """Size of ``name`` (the real file's size)."""
    return _check_name(name)


def write_corpus(directory: str | Path, limit: int | None = None,
                 names: tuple[str, ...] = SILESIA_NAMES) -> list[Path]:
    """Write the stand-in files (or their first ``limit`` bytes) into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        p = d / name
        with open(p, "wb") as f:
            for chunk in iter_file(name, limit):
                f.write(chunk)
        paths.append(p)
    return paths
