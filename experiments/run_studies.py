"""All six RoPE studies in their planned order, resumable: one command for the whole budget.

Study 1 trains the causal LMs that studies 3 and 6 reuse; study 2 (masked LM) and study 4
(passkey mixture) train their own; study 5's speed half is a benchmark and runs last, when
nothing trains. Every script skips finished runs and cached scores, so rerunning this after a
kill continues where it stopped. Each study's wall time is appended to
``docs/results/studies_wall_time.json``.

    nohup python experiments/run_studies.py > runs/studies/all.log 2>&1 &
    python experiments/run_studies.py --only passkey
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import studylib as lib

ORDER = ["position_ablation", "length_extrapolation", "long_term_decay", "mlm_position_ablation", "passkey",
         "linear_attention_speed"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=ORDER, default=ORDER)
    args = parser.parse_args(argv)
    log = lib.RESULTS / "studies_wall_time.json"
    times = json.loads(log.read_text(encoding="utf-8")) if log.is_file() else {}
    for name in ORDER:
        if name not in args.only:
            continue
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(Path(__file__).parent / f"{name}.py")], check=True)
        times[name] = {"seconds_this_call": round(time.perf_counter() - t0, 1),
                       "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        lib.atomic_write_text(log, json.dumps(times, indent=2) + "\n")
        print(f"[studies] {name} done in {times[name]['seconds_this_call']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
