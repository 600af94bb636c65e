"""TopKCollector in a training-loop-like setting: any feature activations, any tokenizer.

Run: python examples/topk_collector.py   (writes topk_collector.npz and prints a Markdown report)

A tiny "SAE" (random ReLU encoder) reads random embeddings of a toy sentence stream; swap in
`sae.encode(resid)` and your tokenizer's `convert_ids_to_tokens` to use it for real.
"""

import numpy as np
import torch

from latent_atlas.analysis.topk import TopKCollector

VOCAB = "the cat sat on a mat while dog ran to park and bird sang in tree".split()


def main() -> None:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    d_model, n_latents, batch, seq = 32, 16, 8, 24
    embed = torch.randn(len(VOCAB), d_model)
    encoder = torch.nn.Linear(d_model, n_latents)  # stands in for sae.encode

    collector = TopKCollector(n_features=n_latents, k=5, threshold=0.5, context=4)
    for step in range(20):  # the training loop
        token_ids = torch.from_numpy(rng.integers(0, len(VOCAB), (batch, seq)))
        with torch.no_grad():
            latents = torch.relu(encoder(embed[token_ids]))  # [batch, seq, n_latents]
        if step % 2 == 0:  # collecting every few steps keeps the overhead small
            collector.add(latents, token_ids, sequence_ids=step * batch + np.arange(batch))

    collector.save("topk_collector.npz")
    reloaded = TopKCollector.load("topk_collector.npz")
    print(reloaded.report(decode=lambda ids: [" " + VOCAB[i] for i in ids], features=[0, 1, 2], n_examples=3))
    print(reloaded.feature_stats(0))


if __name__ == "__main__":
    main()
