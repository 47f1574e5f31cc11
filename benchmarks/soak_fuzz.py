#!/usr/bin/env python3
"""Long mutation fuzz (soak) of everything that parses peer bytes: codecs, gzip-ext, wire.

Time-bounded (``--seconds``). Each case builds valid input with the project's own encoders,
mutates it (bit flips, truncation, insertion, deletion, span overwrite, interesting values) or
replaces it with random bytes, and decodes it. A case passes when the decoder returns exactly
the expected number of bytes or raises one of the project's typed errors (``CodecError`` for
payloads, ``WireError`` for packets); anything else - another exception type, a wrong output
length, a decoder producing more than its bound - is a failure, reported with the seed that
replays it (``--target T --replay SEED``).

Targets:
  codec:<method>  multifd payloads of one channel (1-3 packets, streams decoded in order)
  qzformat        QATzip gzip-ext buffers, one-shot decoder with an output bound
  qzstream        gzip-ext, incremental decoder, random chunking
  wire-init       64-byte MultiFDInit_t (qatmig_engine.wire.InitPacket.decode)
  wire-packet     MultiFDPacket_t headers per dialect (decode_packet + PacketValidator.check)

Usage:
  python benchmarks/soak_fuzz.py --seconds 600           # table
  python benchmarks/soak_fuzz.py --seconds 60 --json
  python benchmarks/soak_fuzz.py --seconds 1800 --update-docs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qatmig_engine.codecs import METHODS, get_codec
from qatmig_engine.codecs import qzformat as qz
from qatmig_engine.errors import CodecError, WireError

PS = 4096
ROOT = Path(__file__).resolve().parent.parent


class CaseFailure(Exception):
    """A fuzz case broke the contract (wrong exception type or wrong output size)."""


def _page(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(PS)
    if kind == 1:
        return rng.randbytes(PS)
    if kind == 2:
        pat = rng.randbytes(rng.randint(1, 40))
        return (pat * (PS // len(pat) + 1))[:PS]
    if kind == 3:
        return rng.randbytes(PS // 2) + (b"multifd text %d\n" % rng.randrange(999) * 300)[:PS // 2]
    if kind == 4:
        return bytes([rng.randrange(256)]) * PS
    base = bytearray(PS)
    for _ in range(rng.randint(1, 20)):  # sparse
        base[rng.randrange(PS)] = rng.randrange(256)
    return bytes(base)


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.randrange(8)
        if op == 0 and b:
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            del b[rng.randrange(len(b) + 1):]
        elif op == 2:
            b += rng.randbytes(rng.randint(1, 128))
        elif op == 3 and b:
            i = rng.randrange(len(b))
            n = rng.randint(1, 64)
            b[i:i + n] = rng.randbytes(min(n, len(b) - i))
        elif op == 4 and b:
            i = rng.randrange(len(b))
            del b[i:i + rng.randint(1, 64)]
        elif op == 5:
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 32))
        elif op == 6 and len(b) >= 4:
            i = rng.randrange(len(b) - 3)
            b[i:i + 4] = rng.choice((b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                     b"\x00\x10\x00\x00", b"\x7f\xff\xff\xff",
                                     b"\x00\x00\x00\x80", b"\x00\x00\x10\x01"))
        elif op == 7 and len(b) > 2:  # duplicate a span (repeats headers/members)
            i = rng.randrange(len(b))
            j = min(len(b), i + rng.randint(1, 256))
            b[j:j] = b[i:j]
    return bytes(b)


# ------------------------------------------------------------------------------ targets
def case_codec(method: str) -> Callable[[random.Random], str]:
    spec = get_codec(method)

    def run(rng: random.Random) -> str:
        level = None
        if spec.level_range:
            lo, hi = spec.level_range
            level = rng.randint(lo, min(hi, 9))
        c = spec.new_compressor(level, channel=1)
        raws = [b"".join(_page(rng) for _ in range(rng.randint(1, 8)))
                for _ in range(rng.randint(1, 3))]
        payloads = [bytes(c.compress(r)) for r in raws]
        pages = [len(r) // PS for r in raws]
        k = rng.randrange(len(payloads))
        if rng.random() < 0.1:
            payloads[k] = rng.randbytes(rng.randint(0, 2000))
        else:
            payloads[k] = mutate(rng, payloads[k])
        if rng.random() < 0.1:
            pages[k] = rng.choice((0, 1, 127, 128, 129, 1 << 20))
        d = spec.new_decompressor(channel=1)
        for pl, n in zip(payloads, pages, strict=True):
            try:
                out = d.decompress(pl, n)
            except CodecError:
                return "rejected"
            except Exception as exc:
                raise CaseFailure(f"{method}: {type(exc).__name__}: {exc}") from exc
            if len(out) != n * PS:
                raise CaseFailure(f"{method}: returned {len(out)} bytes for {n} pages")
        return "accepted"

    return run


def case_qzformat(rng: random.Random) -> str:
    raw = b"".join(_page(rng) for _ in range(rng.randint(0, 6)))
    hb = rng.choice((1024, 4096, 65536))
    level = rng.randint(1, 9)
    kind = rng.randrange(3)
    buf = (qz.compress(raw, level, hw_buff_sz=hb) if kind == 0 else
           qz.compress_hw_layout(raw, level, hw_buff_sz=hb) if kind == 1 else
           qz.compress_two_calls(raw, rng.randint(0, len(raw)), level, hw_buff_sz=hb))
    bad = mutate(rng, buf)
    try:
        out = qz.decompress(bad, max_output=len(raw))
    except CodecError:
        return "rejected"
    except Exception as exc:
        raise CaseFailure(f"qzformat: {type(exc).__name__}: {exc}") from exc
    if len(out) > len(raw):
        raise CaseFailure(f"qzformat: produced {len(out)} > bound {len(raw)}")
    return "accepted"


def case_qzstream(rng: random.Random) -> str:
    raw = b"".join(_page(rng) for _ in range(rng.randint(0, 4)))
    buf = mutate(rng, qz.compress_hw_layout(raw, 1, hw_buff_sz=4096)
                 if rng.random() < 0.5 else qz.compress(raw, 1, hw_buff_sz=4096))
    dec = qz.GzipExtDecoder(out_chunk=8192)
    pos = 0
    try:
        while pos < len(buf):
            n = rng.randint(1, 3000)
            for piece in dec.feed(buf[pos:pos + n]):
                if len(piece) > 8192:
                    raise CaseFailure(f"qzstream: piece of {len(piece)} > 8192")
            pos += n
        dec.finish()
    except CodecError:
        return "rejected"
    except CaseFailure:
        raise
    except Exception as exc:
        raise CaseFailure(f"qzstream: {type(exc).__name__}: {exc}") from exc
    return "accepted"


def _wire_targets() -> dict[str, Callable[[random.Random], str]]:
    try:
        from qatmig_engine import wire
        from qatmig_engine.dialects import DIALECTS
    except ImportError:
        return {}

    dialects = list(DIALECTS)

    def case_init(rng: random.Random) -> str:
        uuid = rng.randbytes(16)
        buf = wire.InitPacket(channel_id=rng.randrange(256), uuid=uuid).encode()
        bad = mutate(rng, buf) if rng.random() < 0.9 else rng.randbytes(64)
        try:
            wire.InitPacket.decode(bad, expected_uuid=uuid if rng.random() < 0.5 else None,
                                   channels=rng.randint(1, 255))
        except WireError:
            return "rejected"
        except Exception as exc:
            raise CaseFailure(f"wire-init: {type(exc).__name__}: {exc}") from exc
        return "accepted"

    def case_packet(rng: random.Random) -> str:
        dname = rng.choice(dialects)
        d = DIALECTS[dname]
        method = rng.choice(d.methods)
        n = wire.page_count(PS)
        normal = rng.randint(0, n)
        zero = rng.randint(0, n - normal) if d.has_zero_pages else 0
        block = 64 << 20
        offs = [rng.randrange(block // PS) * PS for _ in range(normal + zero)]
        pkt = wire.Packet(
            flags=d.method_flag(method) | rng.choice((0, 1)), pages_alloc=n,
            normal_pages=normal, next_packet_size=rng.randint(0, 600000),
            packet_num=rng.randrange(1 << 40), zero_pages=zero, ramblock="pc.ram",
            offsets=offs,
        )
        buf = pkt.encode(dname, PS)
        bad = mutate(rng, buf)
        if len(bad) != len(buf) and rng.random() < 0.7:  # mostly keep the size: reach checks
            bad = (bad + bytes(len(buf)))[: len(buf)]
        try:
            got = wire.decode_packet(bad, dname, PS, channel=0)
            wire.PacketValidator(dname, method, {"pc.ram": block}, PS, channel=0).check(got)
        except WireError:
            return "rejected"
        except Exception as exc:
            raise CaseFailure(f"wire-packet: {type(exc).__name__}: {exc}") from exc
        return "accepted"

    return {"wire-init": case_init, "wire-packet": case_packet}


def targets() -> dict[str, Callable[[random.Random], str]]:
    t: dict[str, Callable[[random.Random], str]] = {f"codec:{m}": case_codec(m) for m in METHODS}
    t["qzformat"] = case_qzformat
    t["qzstream"] = case_qzstream
    t.update(_wire_targets())
    return t


def soak(seconds: float, seed: int, only: list[str] | None, max_cases: int | None
         ) -> dict[str, Any]:
    tg = targets()
    names = [n for n in tg if not only or n in only]
    if not names:
        raise SystemExit(f"no such target; choose from {', '.join(tg)}")
    counts = dict.fromkeys(names, 0)
    rejected = dict.fromkeys(names, 0)
    failures: list[dict[str, Any]] = []
    master = random.Random(seed)
    from qatmig_engine.docstamp import stamp

    stamped = stamp(CODE, ROOT)  # the sources this process runs (hashed before the loop)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    start = time.monotonic()
    deadline = start + seconds
    cases = 0
    while time.monotonic() < deadline and (max_cases is None or cases < max_cases):
        name = names[cases % len(names)]
        case_seed = master.randrange(1 << 62)
        try:
            if tg[name](random.Random(case_seed)) == "rejected":
                rejected[name] += 1
        except CaseFailure as exc:
            failures.append({"target": name, "seed": case_seed, "error": str(exc),
                             "trace": traceback.format_exc(limit=4)})
        counts[name] += 1
        cases += 1
    elapsed = time.monotonic() - start
    return {
        "benchmark": "soak_fuzz",
        "started": started,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seed": seed,
        "seconds": round(elapsed, 1),
        "cases": cases,
        "cases_per_target": counts,
        "rejected_per_target": rejected,
        "failures": failures,
        "wire_fuzzed": any(n.startswith("wire") for n in names),
        "stamp": stamped,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


#: What the figures describe: a change here makes the docs block say "code since changed".
CODE = ["engine/codecs", "engine/wire.py", "engine/dialects.py", "benchmarks/soak_fuzz.py"]
SCRIPT = "benchmarks/soak_fuzz.py --update-docs"

#: What an accepted case of each kind of target was checked for (the checks in case_*).
ACCEPTED_MEANS = {
    "codec": "decoded to exactly the expected number of bytes",
    "qzformat": "decoded within the output bound (at most the original's size)",
    "qzstream": "decoded in pieces of at most 8192 bytes and finished cleanly",
    "wire": "decoded and passed the validator (no size to check: a header)",
}


def _kind(target: str) -> str:
    return "codec" if target.startswith("codec:") else (
        "wire" if target.startswith("wire") else target)


def markdown(res: dict[str, Any]) -> str:
    lines = ["| target | cases | rejected with a typed error | accepted | accepted means |",
             "|---|---|---|---|---|"]
    rej = res["rejected_per_target"]
    lines += [f"| {k} | {v} | {rej[k]} | {v - rej[k]} | {ACCEPTED_MEANS[_kind(k)]} |"
              for k, v in res["cases_per_target"].items()]
    lines.append(f"| **total** | **{res['cases']}** | {sum(rej.values())} | "
                 f"{res['cases'] - sum(rej.values())} | |")
    lines.append("")
    lines.append(
        f"Run {res['started']} to {res['when'][11:]} by `benchmarks/soak_fuzz.py --seconds "
        f"{round(res['seconds'])}` (seed {res['seed']}): {res['cases']} mutated or random "
        f"inputs in {res['seconds']} s on a machine with load average {res.get('load_average')}"
        f" at the end; **{len(res['failures'])} failures** (a failure = an exception other "
        "than CodecError/WireError, or an accepted case that broke its check above)."
    )
    return "\n".join(lines)


def update_docs(res: dict[str, Any]) -> None:
    from qatmig_engine.docstamp import write_block

    write_block(ROOT / "docs" / "performance.md", "soak", markdown(res), script=SCRIPT,
                code=CODE, root=ROOT, stamped=res["stamp"],
                heading="## Fuzz / soak (`benchmarks/soak_fuzz.py`)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example: python benchmarks/soak_fuzz.py --seconds 600",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="time budget (default 60)")
    p.add_argument("--seed", type=int, default=None, help="master seed (default: random)")
    p.add_argument("--cases", type=int, default=None, help="stop after N cases")
    p.add_argument("--target", action="append", help="only this target (repeatable)")
    p.add_argument("--replay", type=int, metavar="CASE_SEED",
                   help="run one case of --target with this case seed and show the traceback")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--update-docs", action="store_true",
                   help="write the result into docs/performance.md (Fuzz / soak)")
    args = p.parse_args(argv)
    if args.replay is not None:
        if not args.target or len(args.target) != 1:
            raise SystemExit("--replay needs exactly one --target")
        targets()[args.target[0]](random.Random(args.replay))
        print("case passed")
        return 0
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    res = soak(args.seconds, seed, args.target, args.cases)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        from qatmig_engine.cli._common import format_table

        rej = res["rejected_per_target"]
        print(format_table(["target", "cases", "rejected", "accepted"],
                           [(k, v, rej[k], v - rej[k])
                            for k, v in res["cases_per_target"].items()]))
        print(f"\n{res['cases']} cases in {res['seconds']} s, seed {seed}, "
              f"{len(res['failures'])} failures")
        for f in res["failures"][:20]:
            print(f"  {f['target']} seed {f['seed']}: {f['error']}")
    if args.update_docs:
        update_docs(res)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
