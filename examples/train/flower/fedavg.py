#!/usr/bin/env python3
"""Flower FedAvg on Agora's digits shards: the baseline of `agora bench train`.

Usage: fedavg.py DATA_DIR ROUNDS LOCAL_STEPS BATCH LEARNING_RATE

Same shards and held-out set as Agora (examples/train/data/*.bin), the same
model (softmax regression, 64 features as pixel/16, 10 classes, weights
starting at zero) and the same local training (LOCAL_STEPS minibatch SGD
steps of BATCH samples drawn with replacement, plain learning rate), in
numpy float64. Flower runs the rounds: an in-process gRPC server with the
FedAvg strategy (weighted by shard size) and one NumPyClient per shard, each
in a thread. Prints one JSON line at the end: per-round held-out accuracy
and the wall time of each round (from the second on: the first also waits
for the clients to connect).
"""

import json
import socket
import struct
import sys
import threading
import time

import numpy as np
import flwr as fl


def load(path):
    with open(path, "rb") as f:
        b = f.read()
    magic, version, feat, classes, n = b[:4], *struct.unpack("<IIII", b[4:20])
    assert magic == b"AGTD" and version == 1
    rec = np.frombuffer(b[20:], dtype=np.uint8).reshape(n, feat + 1)
    return rec[:, :feat].astype(np.float64) / 16.0, rec[:, feat].astype(np.int64)


def probs(w, x):
    z = x @ w[:, :-1].T + w[:, -1]
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def accuracy(w, x, y):
    return float((probs(w, x).argmax(axis=1) == y).mean() * 100.0)


class Client(fl.client.NumPyClient):
    def __init__(self, k, x, y, steps, batch, lr):
        self.k, self.x, self.y = k, x, y
        self.steps, self.batch, self.lr = steps, batch, lr
        self.rng = np.random.default_rng(k)

    def fit(self, parameters, config):
        w = parameters[0].copy()
        for _ in range(self.steps):
            i = self.rng.integers(0, len(self.y), self.batch)
            p = probs(w, self.x[i])
            p[np.arange(len(i)), self.y[i]] -= 1.0
            g = np.zeros_like(w)
            g[:, :-1] = p.T @ self.x[i] / len(i)
            g[:, -1] = p.mean(axis=0)
            w -= self.lr * g
        return [w], len(self.y), {}

    def evaluate(self, parameters, config):
        return 0.0, len(self.y), {}


def main():
    data, rounds, steps, batch, lr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    shards = []
    k = 0
    while True:
        try:
            shards.append(load(f"{data}/shard-{k}.bin"))
        except FileNotFoundError:
            break
        k += 1
    xt, yt = load(f"{data}/test.bin")
    acc, stamps = [], []

    def evaluate_fn(server_round, parameters, config):
        stamps.append(time.perf_counter())
        if server_round > 0:
            acc.append(accuracy(parameters[0], xt, yt))
        return 0.0, {}

    init = fl.common.ndarrays_to_parameters([np.zeros((10, 65))])
    strategy = fl.server.strategy.FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=len(shards),
        min_available_clients=len(shards),
        initial_parameters=init,
        evaluate_fn=evaluate_fn,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    clients = []
    for k, (x, y) in enumerate(shards):
        c = Client(k, x, y, steps, batch, lr)
        t = threading.Thread(
            target=lambda c=c: fl.client.start_client(server_address=address, client=c.to_client()),
            daemon=True,
        )
        clients.append(t)

    def start_clients():
        time.sleep(1.0)
        for t in clients:
            t.start()

    threading.Thread(target=start_clients, daemon=True).start()
    fl.server.start_server(
        server_address=address,
        config=fl.server.ServerConfig(num_rounds=rounds),
        strategy=strategy,
    )
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    # The first round also waits for the clients to connect: left out when there are others.
    times = times[1:] if len(times) > 1 else times
    print(json.dumps({"flwr": fl.__version__, "accuracy": acc, "round_secs": times}))


if __name__ == "__main__":
    main()
