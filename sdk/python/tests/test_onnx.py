"""ONNX inference jobs on a live 8-node devnet with 2 Byzantine workers (see conftest.py):
every verified answer must be onnxruntime's answer on the same model and input, and the
Byzantine workers' wrong answers must be outvoted, never accepted.

onnxruntime and numpy come from PyPI (.ci/requirements.txt); the models and inputs are the
committed examples in examples/onnx (trained on scikit-learn's bundled digits).
"""

from __future__ import annotations

import io
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

from agora_sdk import AgoraError

from conftest import REPO, Devnet

ort: Any = pytest.importorskip("onnxruntime")

EXAMPLES = REPO / "examples" / "onnx"
#: (model, comparison rule): two classifiers compared by their predicted class, and the MLP as
#: skl2onnx exports it, whose first output is the int64 label itself, compared exactly.
MODELS: List[Tuple[str, str]] = [
    ("mlp.onnx", "argmax"),
    ("logreg.onnx", "argmax"),
    ("mlp_label.onnx", "exact"),
]
JOBS = 100
#: A debug build on a loaded 2-core machine, 100 jobs of 3 replicas each.
TIMEOUT_S = 900.0
HONEST = 6


def npy(x: "np.ndarray[Any, Any]") -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def reference(model: str, x: "np.ndarray[Any, Any]") -> int:
    """onnxruntime's prediction for one row: the label output, or the argmax of the
    probabilities."""
    sess = ort.InferenceSession(str(EXAMPLES / model), providers=["CPUExecutionProvider"])
    first = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    out = np.asarray(first)
    return int(out.reshape(-1)[0]) if out.dtype == np.int64 else int(np.argmax(out, axis=-1)[0])


def agreed_answer(out: bytes) -> int:
    """The prediction in a verified output `.npy`."""
    y = np.load(io.BytesIO(out))
    return int(y.reshape(-1)[0]) if y.dtype == np.int64 else int(np.argmax(y, axis=-1)[0])


def test_onnx_jobs_agree_with_onnxruntime(byzantine_devnet: Devnet) -> None:
    net = byzantine_devnet
    x_test = np.load(EXAMPLES / "x_test.npy")
    assert x_test.dtype == np.float32 and x_test.shape[1] == 64
    byzantine = {net.client(i).status().peer_id for i in range(HONEST, len(net.apis))}
    assert len(byzantine) == 2
    models = {name: (EXAMPLES / name).read_bytes() for name, _ in MODELS}
    jobs: Dict[str, Tuple[str, int]] = {}
    for j in range(JOBS):
        name, rule = MODELS[j % len(MODELS)]
        row = x_test[j : j + 1]
        c = net.client(j % HONEST)
        job_id = c.submit(models[name], npy(row), runtime="onnx", verify=rule, redundancy=3)
        jobs[job_id] = (name, j)
    wrong: List[str] = []
    outvoted = 0
    for job_id, (name, j) in jobs.items():
        c = net.client(j % HONEST)
        st = c.wait(job_id, timeout=TIMEOUT_S)
        assert st.verified, f"job {job_id} ({name}, row {j}) {st.state}: {st.reason}\n{net.log_tail()}"
        assert st.spec is not None and st.spec.get("runtime") == "onnx", st.spec
        assert st.spec.get("verify") == MODELS[j % len(MODELS)][1], st.spec
        assert not byzantine & set(st.quorum), f"job {job_id}: a Byzantine worker is in the quorum"
        got = agreed_answer(c.output(job_id))
        want = reference(name, x_test[j : j + 1])
        if got != want:
            wrong.append(f"{job_id} {name} row {j}: agora {got}, onnxruntime {want}")
        outvoted += sum(
            1 for r in st.results if r.get("worker") in byzantine and r.get("agreed") is False
        )
    assert not wrong, "answers that differ from onnxruntime's:\n" + "\n".join(wrong)
    # The Byzantine workers took part and lost: the test exercised the vote.
    assert outvoted > 0, "no Byzantine result was outvoted: they never ran a job"


def test_bad_onnx_jobs_are_refused_with_what_to_fix(byzantine_devnet: Devnet) -> None:
    c = byzantine_devnet.client(0)
    mlp = (EXAMPLES / "mlp.onnx").read_bytes()
    x = np.load(EXAMPLES / "x1.npy")
    cases = [
        # A float64 input for a float32 model: named, with the conversion to make.
        (mlp, npy(x.astype(np.float64)), "argmax", "float32"),
        # 63 columns for a 64-column model.
        (mlp, npy(x[:, :63]), "argmax", "64"),
        # Not a model at all.
        (b"not a model", npy(x), "argmax", "ONNX"),
        # An operator tract does not implement.
        ((EXAMPLES / "scaler_logreg.onnx").read_bytes(), npy(x), "argmax", "Scaler"),
        # A rule that does not exist.
        (mlp, npy(x), "median", "rule"),
    ]
    for model, tensor, rule, needle in cases:
        with pytest.raises(AgoraError) as e:
            c.submit(model, tensor, runtime="onnx", verify=rule)
        assert needle in str(e.value), f"{needle!r} not in: {e.value}"
    # The node still serves: a good job after the bad ones is verified.
    out = c.infer(mlp, npy(x), timeout=TIMEOUT_S)
    assert agreed_answer(out) == reference("mlp.onnx", x)
