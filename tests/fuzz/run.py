"""``scripts/fuzz TARGET --seconds N [--corpus DIR]``: one target under atheris
(libFuzzer), its product code instrumented for coverage.

The corpus is ``--corpus DIR`` (default ``.fuzz/TARGET/corpus``), where libFuzzer
keeps the inputs that found new coverage, and the committed seeds under
``tests/fuzz/seeds/TARGET/``, read but never written. A crash stops the run;
its input is written under ``.fuzz/TARGET/`` and the path printed: copy it into
the seeds (``test_seeds.py`` then replays it on every test run) and fix the
product. ``all`` runs every target in turn, sharing ``--seconds`` of wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TARGETS = ("registrar_request", "agent_config", "agent_state", "capture_record")
# Coverage in these guides mutation. --libraries adds the pure-Python parsers under
# ours: deeper for long runs, but instrumenting them costs ~25 s at start (not
# yaml: instrumented, its scanner runs at a few configs a second).
INSTRUMENT = ["agent", "registrar", "meshcore"]
LIBRARIES = ["asn1crypto", "jwt"]
MAX_LEN = {"registrar_request": 64 * 1024, "agent_config": 8 * 1024,
           "agent_state": 32 * 1024, "capture_record": 8 * 1024}


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=(*TARGETS, "all"))
    parser.add_argument("--seconds", type=int, required=True,
                        help="how long to fuzz (for 'all': in total)")
    parser.add_argument("--corpus", type=Path,
                        help="corpus directory to read and grow (default .fuzz/TARGET/corpus)")
    parser.add_argument("--libraries", action="store_true",
                        help=f"also instrument {', '.join(LIBRARIES)} (slower start)")
    return parser.parse_args(argv)


def _run_all(seconds: int) -> int:
    """Each target in turn, ``seconds`` of wall time in all, start-up included:
    each gets an equal share of what is left (at least 2 s of fuzzing)."""
    deadline = time.monotonic() + seconds
    for i, target in enumerate(TARGETS):
        each = max(2, int((deadline - time.monotonic()) / (len(TARGETS) - i)))
        code = subprocess.call([sys.executable, "-m", "tests.fuzz.run", target,
                                "--seconds", str(each)], cwd=REPO)
        if code != 0:
            print(f"fuzz: {target} failed (exit {code})", file=sys.stderr)
            return code
    return 0


def main(argv: list[str]) -> int:
    args = _args(argv)
    if args.target == "all":
        if args.corpus is not None:
            sys.exit("fuzz: --corpus needs one target")
        return _run_all(args.seconds)
    import atheris  # type: ignore[import-untyped]  # ships no type information

    with atheris.instrument_imports(include=INSTRUMENT + (LIBRARIES if args.libraries else [])):
        import importlib
        module = importlib.import_module(f"tests.fuzz.{args.target}")
    work = REPO / ".fuzz" / args.target
    corpus = args.corpus or work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    seeds = HERE / "seeds" / args.target
    libfuzzer = [sys.argv[0], str(corpus), str(seeds), f"-max_total_time={args.seconds}",
                 f"-artifact_prefix={work}/", f"-max_len={MAX_LEN[args.target]}",
                 "-timeout=20", "-rss_limit_mb=3072", "-print_final_stats=1"]
    print(f"fuzz: {args.target} for {args.seconds} s; corpus {corpus}; seeds {seeds}",
          flush=True)
    from tests.fuzz.mutate import structured

    def byte_mutator(data: bytes, max_size: int) -> bytes:
        # Looked up per call: atheris binds the real Mutate only once Fuzz() runs.
        return bytes(atheris.Mutate(data, max_size))

    atheris.Setup(libfuzzer, module.check,
                  custom_mutator=structured(module.mutate, byte_mutator))
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits the process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
