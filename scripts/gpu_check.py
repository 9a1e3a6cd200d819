"""GPU smoke check of the DP training path (run on a CUDA machine): DP-SGD steps on a tiny BERT,
full fine-tuning (ghost clipping) and LoRA (hooks), plus a tabular model; prints timings and
asserts parameters, noise and evaluation stay on the GPU and give finite results."""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch

from client.training import DpSgdSettings, train_locally
from common.evaluation import evaluate
from common.models.tabular import build_tabular_model
from common.models.text import LoraSettings, encode_texts, load_text_classifier
from common.models.tiny import save_tiny_bert
from common.models.weights import load_trainable_state, trainable_state
from common.task import pick_device


def main() -> None:
    device = pick_device()
    print("device", device, torch.cuda.get_device_name(0) if device.type == "cuda" else "")
    assert device.type == "cuda", "no CUDA device found"
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(save_tiny_bert(tmp, hidden=64, layers=2))
        texts = [
            " ".join(rng.choice(["good", "bad", "film", "plot", "fine"], 12)) for _ in range(512)
        ]
        labels = np.array([int("good" in t) for t in texts])
        for name, lora in [("full", None), ("lora", LoraSettings(8, 16, 0.0, ("query", "value")))]:
            model, tok = load_text_classifier(path, 2, lora=lora, device=device)
            data, _ = encode_texts(tok, texts, labels, 32)
            start = trainable_state(model)
            t = time.perf_counter()
            result = train_locally(
                model,
                data,
                batch_size=64,
                epochs=2,
                learning_rate=0.01,
                dp=DpSgdSettings(1.0, 1.0),
                device=device,
                seed=None,
                optimizer="adam",
            )
            took = time.perf_counter() - t
            assert all(p.device.type == "cuda" for p in model.parameters())
            after = trainable_state(model)
            assert any(not np.allclose(start[k], after[k]) for k in start), "nothing trained"
            assert all(np.isfinite(v).all() for v in after.values())
            load_trainable_state(model, after)
            ev = evaluate(model, data, device=device)
            print(
                f"{name}: {result.num_steps} DP steps in {took:.2f}s, loss {result.loss:.4f}, "
                f"acc {ev.accuracy:.3f}"
            )
    features = torch.randn(1024, 20)
    y = (features[:, 0] > 0).long()
    model = build_tabular_model("mlp", 20, 2).to(device)
    ds = torch.utils.data.TensorDataset(features, y)
    r = train_locally(
        model,
        ds,
        batch_size=64,
        epochs=3,
        learning_rate=0.1,
        dp=DpSgdSettings(1.0, 1.0),
        device=device,
        seed=None,
    )
    ev = evaluate(model, ds, device=device)
    print(f"tabular: {r.num_steps} DP steps, acc {ev.accuracy:.3f}")
    assert ev.accuracy > 0.8
    print("GPU CHECK PASSED")


if __name__ == "__main__":
    main()
