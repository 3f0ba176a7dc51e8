"""Run every benchmark and print its table: ``python -m tests.benchmarks`` (or ``make bench``).

Benchmarks print side-by-side timings and ratios from one run; they are not timed tests and
assert nothing about speed. ``--quick`` uses smaller sizes (as the test suite does).
"""

import argparse

import torch

from . import bench_bayes, bench_dispatch, bench_em, bench_experts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--cpu-time", action="store_true",
                        help="sparse dispatch: one thread, timed in CPU seconds (for a machine others share)")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, devices: {', '.join(devices)}\n")
    bench_em.run(quick=args.quick)
    bench_bayes.run(quick=args.quick)
    for device in devices:
        bench_experts.run(device, quick=args.quick)
    for device in devices:
        bench_dispatch.run(device, quick=args.quick, cpu_time=args.cpu_time)


if __name__ == "__main__":
    main()
