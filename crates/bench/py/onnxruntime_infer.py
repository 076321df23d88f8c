"""onnxruntime baseline for `agora bench infer`: the same model and the same .npy input.

Prints one JSON object with three figures, each over RUNS timed calls after WARMUP untimed ones
(time.perf_counter_ns around each call):
  run_only:  sess.run on the input already loaded as a numpy array (the inference alone)
  full:      np.load of the .npy bytes + sess.run + np.save of the first output to bytes
             (the same scope as Agora's OnnxEngine::run_blocking, which parses the .npy input,
             runs, and encodes the output as .npy)
  throughput: THREADS Python threads calling `full` on one shared session for WINDOW_S seconds
             (onnxruntime releases the GIL while it runs)
The session is created once, CPU provider, one intra-op and one inter-op thread, sequential
execution, all graph optimizations on.
Usage: python onnxruntime_infer.py MODEL.onnx INPUT.npy RUNS WARMUP WINDOW_S THREADS
"""

import io
import json
import math
import sys
import threading
import time


def quantiles(samples_ns):
    s = sorted(samples_ns)

    def q(p):
        # Nearest rank, as the Rust side computes it.
        rank = max(1, min(len(s), math.ceil(p * len(s))))
        return s[rank - 1] / 1000.0

    return {
        "p50_us": round(q(0.50), 1),
        "p99_us": round(q(0.99), 1),
        "mean_us": round(sum(s) / len(s) / 1000.0, 1),
        "min_us": round(s[0] / 1000.0, 1),
        "max_us": round(s[-1] / 1000.0, 1),
        "samples": len(s),
    }


def main() -> None:
    model, input_path = sys.argv[1], sys.argv[2]
    runs, warmup = int(sys.argv[3]), int(sys.argv[4])
    window, threads = float(sys.argv[5]), int(sys.argv[6])
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    with open(input_path, "rb") as f:
        npy = f.read()
    x = np.load(io.BytesIO(npy))

    def run_only():
        return sess.run(None, {name: x})[0]

    def full():
        y = sess.run(None, {name: np.load(io.BytesIO(npy))})[0]
        out = io.BytesIO()
        np.save(out, y)
        return out.getvalue()

    # Alternate the two in blocks, as the Rust side does, so that noise hits both.
    blocks = 10 if runs >= 10 else 1
    per = max(1, runs // blocks)
    run_lat, full_lat = [], []
    for f in (run_only, full):
        for _ in range(warmup):
            f()
    for _ in range(blocks):
        for f, lat in ((run_only, run_lat), (full, full_lat)):
            for _ in range(per):
                t = time.perf_counter_ns()
                f()
                lat.append(time.perf_counter_ns() - t)

    done = [0] * threads
    stop = time.perf_counter() + window

    def worker(i):
        n = 0
        while time.perf_counter() < stop:
            full()
            n += 1
        done[i] = n

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0

    print(
        json.dumps(
            {
                "onnxruntime_version": ort.__version__,
                "numpy_version": np.__version__,
                "output_shape": list(run_only().shape),
                "run_only": quantiles(run_lat),
                "full": quantiles(full_lat),
                "throughput": {
                    "threads": threads,
                    "window_s": round(elapsed, 2),
                    "inferences": sum(done),
                    "per_s": round(sum(done) / elapsed, 1),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
