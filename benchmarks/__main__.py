"""Run the benchmarks and rewrite their sections of benchmarks/RESULTS.md.

    python -m benchmarks            # all
    python -m benchmarks ingest     # some, by name

Each benchmark module has ``run() -> str`` (a markdown section). Sections
not run this time are kept as they were, so a slow one need not be repeated
to refresh another.
"""

from __future__ import annotations

import importlib
import platform
import re
import sys
import time
from pathlib import Path

BENCHES = ["ingest", "queue", "gating", "gating_digits", "tui", "expert", "lt_losses", "mheight", "mheight_models", "mheight_fast", "tui_queue", "reject"]
RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = """# Benchmark results

Written by `make bench` (`python -m benchmarks [name ...]`). Every figure sits
beside its reference, measured in the same run on the same machine; ratios
travel between machines, absolute times only mean something for the machine
named in each section.
"""


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} x {cpu}, Python {platform.python_version()}"


def main(argv: list[str]) -> int:
    names = argv or BENCHES
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"error: unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    for name in names:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        body = importlib.import_module(f"benchmarks.bench_{name}").run()
        stamp = time.strftime("%Y-%m-%d")
        section = (f"<!-- bench:{name} -->\n{body.strip()}\n\n_Measured {stamp} on {machine()}; "
                   f"took {time.perf_counter() - t0:.0f} s._\n<!-- /bench:{name} -->")
        pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
        text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
        print(body, flush=True)
    RESULTS.write_text(text)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
