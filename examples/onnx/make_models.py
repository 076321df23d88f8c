"""Trains the example ONNX models on scikit-learn's bundled digits data set and exports them.

No download: `sklearn.datasets.load_digits` ships with scikit-learn. Everything is seeded, so a
rerun with the same package versions writes the same models (checksums in SHA256SUMS).

Writes, next to this script:
  mlp.onnx          MLPClassifier (64 -> 64 ReLU -> 10 softmax); one output, `probabilities`
  logreg.onnx       multinomial LogisticRegression (ONNX-ML LinearClassifier + Normalizer);
                    one output, `probabilities`
  mlp_label.onnx    the MLP exactly as skl2onnx exports it: two outputs, `label` (int64 [N]) first,
                    then `probabilities`; a job returns the first output, the labels
  scaler_logreg.onnx
                    Pipeline(StandardScaler, LogisticRegression): skl2onnx writes the scaler as
                    the ONNX-ML operator Scaler, which tract does not implement (a real-world
                    model that Agora must refuse with a clear error)
  x1.npy, x16.npy   the first 1 and 16 held-out rows, float32 [N, 64], pixels scaled to [0, 1]
  x_test.npy        all held-out rows (float32 [297, 64])
  mlp_test_probs.npy, logreg_test_probs.npy
                    onnxruntime's probabilities on x_test.npy (float32 [297, 10])
  expected.json     onnxruntime's predicted labels (argmax) for every input and model, the true
                    labels, the held-out accuracy, and the package versions used

Usage: python make_models.py   (needs numpy scikit-learn skl2onnx onnx onnxruntime)
"""

import hashlib
import json
import os
import warnings

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
import sklearn
import skl2onnx
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skl2onnx import to_onnx

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_ROWS = 1500
OPSET = 13


def path(name: str) -> str:
    return os.path.join(HERE, name)


def probabilities_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """Keeps only the `probabilities` output (and the nodes it needs).

    skl2onnx puts `label` first, and a job returns the first output; the probabilities alone
    lower to standard operators for the MLP (MatMul, Add, Relu, Softmax, no ONNX-ML
    ArrayFeatureExtractor), and a label is their argmax, which is what `--verify argmax`
    compares.
    """
    inputs = [i.name for i in model.graph.input]
    extracted = onnx.utils.Extractor(model).extract_model(inputs, ["probabilities"])
    # Extractor drops the producer fields; keep them so the file says where it came from.
    extracted.producer_name = model.producer_name
    extracted.producer_version = model.producer_version
    extracted.ir_version = model.ir_version
    del extracted.opset_import[:]
    extracted.opset_import.extend(model.opset_import)
    onnx.checker.check_model(extracted)
    return extracted


def export(estimator, sample: np.ndarray) -> onnx.ModelProto:
    return to_onnx(
        estimator,
        sample,
        options={type(estimator): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 1},
    )


def save_onnx(model: onnx.ModelProto, name: str) -> None:
    with open(path(name), "wb") as f:
        f.write(model.SerializeToString())


def predict(name: str, x: np.ndarray) -> np.ndarray:
    """Probabilities from onnxruntime (single-threaded, CPU)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path(name), opts, providers=["CPUExecutionProvider"])
    (probs,) = sess.run(["probabilities"], {sess.get_inputs()[0].name: x})
    return probs


def main() -> None:
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, y_train = x[:TRAIN_ROWS], y[:TRAIN_ROWS]
    x_test, y_test = x[TRAIN_ROWS:], y[TRAIN_ROWS:]

    mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0)
    mlp.fit(x_train, y_train)
    logreg = LogisticRegression(max_iter=1000)
    logreg.fit(x_train, y_train)

    scaled = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    scaled.fit(x_train, y_train)
    save_onnx(
        to_onnx(
            scaled,
            x_train[:1],
            options={LogisticRegression: {"zipmap": False}},
            target_opset={"": OPSET, "ai.onnx.ml": 1},
        ),
        "scaler_logreg.onnx",
    )

    full_mlp = export(mlp, x_train[:1])
    save_onnx(full_mlp, "mlp_label.onnx")
    save_onnx(probabilities_only(full_mlp), "mlp.onnx")
    save_onnx(probabilities_only(export(logreg, x_train[:1])), "logreg.onnx")

    inputs = {"x1.npy": x_test[:1], "x16.npy": x_test[:16], "x_test.npy": x_test}
    for name, arr in inputs.items():
        np.save(path(name), np.ascontiguousarray(arr, dtype=np.float32))

    expected = {
        "true_labels": {n: y_test[: len(a)].tolist() for n, a in inputs.items()},
        "labels": {},
        "accuracy": {},
        "versions": {
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
    }
    for model, sk in [("mlp.onnx", mlp), ("logreg.onnx", logreg)]:
        labels = {}
        for name, arr in inputs.items():
            probs = predict(model, arr)
            # The exported model is the estimator: same classes as scikit-learn predicts.
            assert (np.argmax(probs, axis=1) == sk.predict(arr)).all(), (model, name)
            labels[name] = np.argmax(probs, axis=1).tolist()
        expected["labels"][model] = labels
        expected["accuracy"][model] = round(float((np.array(labels["x_test.npy"]) == y_test).mean()), 4)
        np.save(path(model.replace(".onnx", "_test_probs.npy")), predict(model, x_test))
    with open(path("expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")

    files = sorted(
        n for n in os.listdir(HERE) if n.endswith((".onnx", ".npy")) or n == "expected.json"
    )
    with open(path("SHA256SUMS"), "w") as f:
        for n in files:
            with open(path(n), "rb") as g:
                f.write(f"{hashlib.sha256(g.read()).hexdigest()}  {n}\n")
    print(json.dumps({"accuracy": expected["accuracy"], "files": files}))


if __name__ == "__main__":
    main()
