"""``qatmig guest``: build guest RAM images from Silesia (real or stand-in), inspect them, and
list the corpus."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import ParameterError
from ._common import add_json_flag, format_table, print_json, progress, size_arg

EPILOG = """\
examples:
  qatmig guest build --size 1G --corpus stand-in -o guest.img
  qatmig guest build --size 256M --corpus silesia --zero-ratio 0.2 --seed 7 -o g.img
  qatmig guest build --size 64M --corpus ../shared/corpora/calgary -o calgary.img
  qatmig guest build --size 1G --cached          # print the cached image's path (build once)
  qatmig guest info guest.img --json
  qatmig guest corpus                            # 12 files: published vs stand-in ratios
  qatmig guest corpus --download                 # fetch + verify silesia.zip (needs internet)

Corpora: 'stand-in' (deterministic generator, always available), 'silesia' (the real corpus
from $QATMIG_SILESIA = its directory or silesia.zip, or the cache after --download; every
file's size and sha256 are checked), 'auto' (real when present, else stand-in), or a DIR of
files. Images are sparse: zero pages are not written. See docs/guest-memory.md.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "guest",
        help="build and inspect Silesia guest RAM images",
        description="Guest RAM images tiled page-aligned from the Silesia corpus (real or "
        "the calibrated stand-in) or a directory, with a share of zero pages.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(title="guest commands", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])

    b = sub.add_parser("build", help="write a guest image (sparse) and its FILE.json sidecar",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--size", type=size_arg, required=True,
                   help="image size, a multiple of 4 KiB (e.g. 256M, 1G, 32G)")
    b.add_argument("--corpus", default="stand-in",
                   help="stand-in | silesia | auto | DIR | ZIP (default stand-in)")
    b.add_argument("--zero-ratio", type=float, default=0.0, metavar="R",
                   help="share of zero pages, 0..1 (default 0)")
    b.add_argument("--seed", type=int, default=0,
                   help="picks the start page in the corpus and the zero pages (default 0)")
    out = b.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", metavar="FILE", help="where to write the image")
    out.add_argument("--cached", action="store_true",
                     help="build into the user cache (once) and print its path")
    b.add_argument("--sha256", action="store_true", help="also hash the whole image")
    b.add_argument("--force", action="store_true",
                   help="overwrite FILE when it exists (without it, an existing file is an error)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_json_flag(b)
    b.set_defaults(func=run_build)

    i = sub.add_parser("info", help="size, zero pages, corpus and measured ratios of an image",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("image", metavar="FILE")
    i.add_argument("--packets", type=int, default=32,
                   help="512 KiB windows sampled for the ratios (default 32)")
    i.add_argument("--no-ratios", action="store_true", help="skip the compression sample")
    add_json_flag(i)
    i.set_defaults(func=run_info)

    c = sub.add_parser("corpus", help="the 12 Silesia files: published vs stand-in ratios",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--sample", type=size_arg, default=1 << 20,
                   help="stand-in bytes measured per file (default 1M; 0 = no measurement)")
    c.add_argument("--download", action="store_true",
                   help="download silesia.zip, verify it, and keep it in the user cache")
    c.add_argument("--url", default=None, help="download from this URL instead")
    c.add_argument("--verify", metavar="PATH", default=None,
                   help="verify a Silesia directory or zip against the sha256 table")
    add_json_flag(c)
    c.set_defaults(func=run_corpus)


def run_build(args: argparse.Namespace) -> int:
    from ..silesia.corpus import open_corpus
    from ..silesia.image import build_guest_image, cached_guest_image, read_image_info

    if args.output and not args.force and os.path.lexists(args.output):
        raise ParameterError(f"{args.output} exists: pass --force to overwrite it, or choose "
                             "another -o FILE")
    corpus = open_corpus(args.corpus)
    with progress(args.size, "guest image", quiet=args.quiet or args.json) as bar:
        if args.cached:
            path = cached_guest_image(args.size, corpus, args.zero_ratio, args.seed,
                                      progress=bar.update)
            info = read_image_info(path)
        else:
            info = build_guest_image(args.output, args.size, corpus, args.zero_ratio, args.seed,
                                     sha256=args.sha256, progress=bar.update)
    if args.json:
        print_json(info.to_json())
    elif args.cached:
        print(info.path)
    else:
        print(f"{info.path}: {info.size} bytes, {info.pages} pages, {info.zero_pages} zero "
              f"pages, corpus {info.corpus}, seed {info.seed}"
              + (f", sha256 {info.sha256}" if info.sha256 else ""))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..silesia.image import count_zero_pages, read_image_info, sample_ratios

    info = read_image_info(args.image)
    zero_now = count_zero_pages(args.image)
    result: dict[str, Any] = info.to_json()
    result["zero_pages_scanned"] = zero_now
    if zero_now != info.zero_pages:
        result["warning"] = "the file changed since it was built (zero pages differ)"
    if not args.no_ratios:
        result["sample"] = sample_ratios(args.image, packets=max(1, args.packets))
    if args.json:
        print_json(result)
        return 0
    rows = [
        ("file", args.image),
        ("size", f"{info.size} B ({info.size / (1 << 20):.1f} MiB)"),
        ("pages", info.pages),
        ("zero pages", f"{zero_now} ({zero_now / max(1, info.pages):.1%})"),
        ("corpus", info.corpus),
        ("seed", "unknown" if info.seed is None else info.seed),
        ("zero ratio asked", "unknown" if info.zero_ratio is None else info.zero_ratio),
        ("layout", info.layout),
    ]
    if info.sha256:
        rows.append(("sha256", info.sha256))
    if "sample" in result:
        s = result["sample"]
        for codec, r in s["ratios"].items():
            rows.append((f"ratio {codec}", "-" if r is None else f"{r:.3f}"))
        rows.append(("sampled", f"{s['packets']} packets of {s['packet_pages']} pages, zero "
                     "pages left out, each packet compressed on its own"))
    print(format_table(("what", "value"), rows))
    if "warning" in result:
        print(f"warning: {result['warning']}", file=sys.stderr)
    return 0


def run_corpus(args: argparse.Namespace) -> int:
    from ..silesia import standin
    from ..silesia.corpus import download_silesia, find_silesia, open_corpus
    from ..silesia.manifest import PUBLISHED_TOTALS, SILESIA_FILES
    from ..silesia.ratios import ratios

    result: dict[str, Any] = {}
    if args.download:
        result["downloaded"] = str(download_silesia(args.url, quiet=args.json))
    if args.verify:
        result["verified"] = open_corpus(args.verify).name
    real = find_silesia()
    result["real_corpus"] = str(real) if real else None
    files = []
    for f in SILESIA_FILES:
        row: dict[str, Any] = {"file": f.name, "size": f.size, "kind": f.kind,
                               "sha256": f.sha256, "gzip_best_published": f.gzip_best}
        if args.sample:
            row["standin_sample_bytes"] = min(args.sample, f.size)
            row["standin"] = ratios(standin.generate_file(f.name, args.sample))
        files.append(row)
    result["files"] = files
    result["published_totals"] = PUBLISHED_TOTALS
    result["standin"] = standin.CORPUS_NAME
    if args.json:
        print_json(result)
        return 0
    headers = ["file", "size", "kind", "gzip --best (published)"]
    if args.sample:
        headers += ["stand-in zlib-9", "stand-in zlib-1", "stand-in zstd-1"]
    rows = []
    for r in files:
        row = [r["file"], r["size"], r["kind"], f"{r['gzip_best_published']:.3f}"]
        if args.sample:
            row += [f"{r['standin'][c]:.3f}" for c in ("zlib-9", "zlib-1", "zstd-1")]
        rows.append(row)
    print(format_table(headers, rows))
    print("\nwhole corpus, published (lzbench): "
          + ", ".join(f"{c} {v}" for c, v in PUBLISHED_TOTALS.items()))
    if args.sample:
        print(f"stand-in measured on the first {args.sample} bytes of each file "
              f"({standin.CORPUS_NAME}); full table: docs/guest-memory.md")
    print(f"real corpus: {real if real else 'not found (set QATMIG_SILESIA or --download)'}")
    for k in ("downloaded", "verified"):
        if k in result:
            print(f"{k}: {result[k]}")
    return 0
