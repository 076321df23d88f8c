"""Ray baseline for `agora bench dispatch`: the same trivial task, run by Ray on this machine.

Prints one JSON object: sync latency (submit one task, wait for it; p50/p99 over SAMPLES) and
sustained throughput (IN_FLIGHT tasks submitted at once, repeatedly, for WINDOW seconds).
Usage: python ray_trivial.py SAMPLES WINDOW_S IN_FLIGHT
"""

import json
import sys
import time


def main() -> None:
    samples, window, in_flight = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    init_s = time.perf_counter() - t0

    @ray.remote
    def trivial(i: int) -> bytes:
        return b"ok\n"

    # Warm up: worker processes start and the function is exported.
    ray.get([trivial.remote(i) for i in range(200)])
    lat = []
    for i in range(samples):
        t = time.perf_counter()
        out = ray.get(trivial.remote(i))
        lat.append(time.perf_counter() - t)
        assert out == b"ok\n"
    lat.sort()
    done = 0
    t = time.perf_counter()
    while time.perf_counter() - t < window:
        outs = ray.get([trivial.remote(i) for i in range(in_flight)])
        done += len(outs)
    elapsed = time.perf_counter() - t
    ray.shutdown()

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6

    print(
        json.dumps(
            {
                "ray_version": ray.__version__,
                "init_s": round(init_s, 2),
                "sync": {"samples": samples, "p50_us": round(q(0.5), 1), "p99_us": round(q(0.99), 1)},
                "sustained": {
                    "window_s": round(elapsed, 2),
                    "in_flight": in_flight,
                    "tasks": done,
                    "tasks_per_s": round(done / elapsed, 1),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
