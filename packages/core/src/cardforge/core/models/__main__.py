"""Build or list the embedded models.

Run as:
    python -m cardforge.core.models list
    python -m cardforge.core.models prepare                 # all of them
    python -m cardforge.core.models prepare tiny-qwen35-mtp --force
"""

from __future__ import annotations

import argparse
import sys

from cardforge.core.models import EMBEDDED, embedded_path, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cardforge.core.models", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="build into the cache unless already there; prints the paths")
    p.add_argument("names", nargs="*", metavar="NAME", help=f"default: all ({', '.join(EMBEDDED)})")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    sub.add_parser("list", help="names, cache paths and whether each is built")
    args = parser.parse_args(argv)

    if args.cmd == "list":
        for name in EMBEDDED:
            path = embedded_path(name)
            print(
                f"{name}\t{path}\t{'built' if (path / 'cardforge_manifest.json').is_file() else 'not built'}"
            )
        return 0
    unknown = [n for n in args.names if n not in EMBEDDED]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(EMBEDDED)}")
    for name in args.names or list(EMBEDDED):
        print(prepare(name, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
