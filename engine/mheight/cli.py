"""``engine mheight VERB``: the m-height commands.

``height`` is a plain tool (JSON in, JSON out). The other verbs are jobs with
run directories, registered as ``mheight-<verb>`` (so the queue daemon runs
and chains them like any job); this module only maps the spelling, including
the positional arguments the issue promises (``import DIR``,
``evaluate CHECKPOINT``).
"""

from __future__ import annotations

import json
import sys
from typing import Callable

from engine.core.config import OneLineParser
from engine.core.errors import ConfigError, JobError
from engine.core.procs import EXIT_BAD_INPUT

VERBS = {
    "height": "exact h_m of given codes (JSON in, JSON out)",
    "generate": "labelled data sets over an (n, k, m) grid, as resumable shards",
    "import": "the users' pickled pandas DataFrames into shards (needs --trust-pickle)",
    "train": "train one m-height regressor (fc, resnet2d, vit, hard_moe, sparse_moe)",
    "finetune": "sparse MoE whose experts start from pretrained checkpoints",
    "evaluate": "score a checkpoint on a data set, overall and per (n, k, m)",
}
# verb -> the option its positional argument stands for
POSITIONAL = {"import": "--source", "evaluate": "--checkpoint"}
FLAGS = {"--trust-pickle", "--no-trust-pickle", "--augment", "--no-augment", "--canonicalize", "--no-canonicalize"}


def usage() -> str:
    return "usage: engine mheight VERB [options]   (engine mheight VERB --help)\n\nverbs:\n" + "\n".join(
        f"  {v:<9} {h}" for v, h in VERBS.items())


def to_job_argv(verb: str, rest: list[str]) -> list[str]:
    """``import --trust-pickle DIR`` -> ``mheight-import --trust-pickle --source DIR``."""
    opt = POSITIONAL.get(verb)
    out = list(rest)
    if opt:
        for i, tok in enumerate(out):
            prev = out[i - 1] if i else None
            # a bare word is the positional unless it is the value of the option before it
            takes_value = prev is not None and prev.startswith("-") and prev not in FLAGS and "=" not in prev
            if not tok.startswith("-") and not takes_value:
                out[i:i + 1] = [opt, tok]
                break
    return [f"mheight-{verb}", *out]


class _HeightParser(OneLineParser):
    def error(self, message: str):
        if {"--n", "--k", "--m", "--P"} & set(message.split()):
            message += "; codes are JSON (a file or stdin) with keys n, k, m and P, not options"
        super().error(message)


def height_tool(argv: list[str]) -> int:
    # allow_abbrev=False: a guessed ``--m 2`` would otherwise be read as ``--method 2``
    p = _HeightParser(prog="engine mheight height", allow_abbrev=False, description=(
        "Exact m-height of each code. Input: a JSON object or list of objects with n, k, m "
        "(an integer or a list) and P (k x (n-k), nested or flat). Output: one object per (code, m) "
        "with 'height' (a number, or \"inf\")."))
    p.add_argument("input", nargs="?", default="-", help="JSON file, or - for stdin [default: -]")
    p.add_argument("--method", choices=("enumerate", "lp"), default="enumerate",
                   help="enumerate: LP-free vertex enumeration (fast); lp: Roth's LPs with HiGHS (reference)")
    p.add_argument("--indent", type=int, default=None, help="pretty-print the JSON output")
    args = p.parse_args(argv)
    from engine.mheight.codes import check_code, format_height

    try:
        text = sys.stdin.read() if args.input == "-" else open(args.input).read()
    except OSError as e:
        raise JobError(f"cannot read {args.input}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise JobError(f"input is not valid JSON ({e}); give an object or a list of objects with n, k, m, P") from None
    codes = data if isinstance(data, list) else [data]
    # both serve every m of a code at once: one HiGHS model, or one vertex enumeration
    if args.method == "lp":
        from engine.mheight.lp import heights_lp as solve
    else:
        from engine.mheight.solver import heights_enumerate as solve
    out = []
    for i, code in enumerate(codes):
        where = f"code {i}"
        if not isinstance(code, dict) or not {"n", "k", "m", "P"} <= set(code):
            raise JobError(f"{where}: needs the keys n, k, m and P")
        ms = code["m"] if isinstance(code["m"], list) else [code["m"]]
        if not ms:
            continue
        P = [check_code(code["n"], code["k"], m, code["P"], where) for m in ms][0]  # every m checked
        for m, h in zip(ms, solve(code["n"], code["k"], ms, P)):
            out.append({"n": code["n"], "k": code["k"], "m": m, "P": P.tolist(), "height": format_height(h)})
    print(json.dumps(out, indent=args.indent))
    return 0


def main(argv: list[str], run_job: Callable[[list[str]], int]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else EXIT_BAD_INPUT
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: unknown m-height verb '{verb}'; choose one of: {', '.join(VERBS)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if verb == "height":
        try:
            return height_tool(rest)
        except (JobError, ConfigError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    return run_job(to_job_argv(verb, rest))
