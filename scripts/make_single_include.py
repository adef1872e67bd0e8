#!/usr/bin/env python3
"""Writes single_include/pfp/pfp.hpp: <pfp/pfp.hpp> and every pfp header it reaches, in one file.

    python3 scripts/make_single_include.py            regenerate single_include/pfp/pfp.hpp
    python3 scripts/make_single_include.py --check    exit 1 if the checked-in file is out of date
    python3 scripts/make_single_include.py --output F write the header to F instead

Each `#include <pfp/...>` is replaced by that header's text the first time it is reached (as the
preprocessor would open it) and dropped after that, so every header lands once, after the headers
it includes. System includes stay where they are. The output depends only on include/ (no dates, no
paths), so regenerating an unchanged tree gives the same bytes. Python 3 standard library only.
"""

import argparse
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE_DIR = os.path.join(ROOT, "include")
ENTRY = "pfp/pfp.hpp"
DEFAULT_OUTPUT = os.path.join(ROOT, "single_include", "pfp", "pfp.hpp")
COMMAND = "python3 scripts/make_single_include.py"

PFP_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](pfp/[^>"]+)[>"]')

BANNER = """\
// pfp: run functions in parallel worker processes -- single-header edition.
//
// GENERATED from include/ by scripts/make_single_include.py: do not edit; change the headers in
// include/pfp/ and run `{command}`. Everything <pfp/pfp.hpp> offers, in one file: copy it into
// your project and `#include "pfp.hpp"` (or put its directory on the include path and use
// <pfp/pfp.hpp>). C++17, POSIX; link with -pthread. Backend::mpi is not in it (<pfp/mpi.hpp>).
// License: see the LICENSE file of pfp, which covers this file too.

"""


class Amalgamator:
    def __init__(self, include_dir):
        self.include_dir = include_dir
        self.seen = set()
        self.out = []

    def add(self, name, chain):
        path = os.path.join(self.include_dir, name)
        if not os.path.isfile(path):
            via = " (included from " + " -> ".join(chain) + ")" if chain else ""
            raise SystemExit(f"make_single_include: <{name}> not found in {self.include_dir}{via}")
        self.seen.add(name)
        self.out.append(f"// ---- begin <{name}> ----\n")
        with open(path, encoding="utf-8") as f:
            for line in f:
                m = PFP_INCLUDE.match(line)
                if not m:
                    self.out.append(line)
                elif m.group(1) not in self.seen:
                    self.add(m.group(1), chain + [name])
                # else: already inlined above, which is where the preprocessor would have found it
        if self.out and not self.out[-1].endswith("\n"):
            self.out.append("\n")
        self.out.append(f"// ---- end <{name}> ----\n")

    def text(self):
        return BANNER.format(command=COMMAND) + "".join(self.out)


def generate(include_dir=INCLUDE_DIR):
    a = Amalgamator(include_dir)
    a.add(ENTRY, [])
    return a.text()


def write(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Written whole, then moved into place: an interrupted run never leaves half a header.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".pfp.hpp.")
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true",
                   help="regenerate into --output (default: a temporary file) and fail if the "
                        "checked-in single_include/pfp/pfp.hpp differs")
    p.add_argument("--output", help="where to write the header (default: single_include/pfp/pfp.hpp)")
    args = p.parse_args(argv)
    text = generate()
    if not args.check:
        write(args.output or DEFAULT_OUTPUT, text)
        return 0
    if args.output:
        write(args.output, text)
    try:
        with open(DEFAULT_OUTPUT, encoding="utf-8", newline="") as f:
            current = f.read()
    except FileNotFoundError:
        current = None
    if current == text:
        print("single_include/pfp/pfp.hpp is up to date with include/")
        return 0
    why = "is missing" if current is None else "differs from what include/ generates"
    print(f"single_include/pfp/pfp.hpp {why}: run `{COMMAND}` (from the repository root) and commit "
          "the result", file=sys.stderr)
    if current is not None:
        import difflib
        diff = list(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                         "single_include/pfp/pfp.hpp (checked in)",
                                         "single_include/pfp/pfp.hpp (from include/)", n=1))
        sys.stderr.writelines(diff[:40])
        if len(diff) > 40:
            print(f"... ({len(diff) - 40} more diff lines)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
