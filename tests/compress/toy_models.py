"""A toy transformer-shaped model for the pass tests: an embedding, a ModuleList of residual MLP
blocks (what the calibration runner walks block by block, with a keyword argument) and a head."""
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, h, scale=1.0):
        return h + scale * self.down(torch.relu(self.up(h)))


class TinyTransformer(nn.Module):
    def __init__(self, d=64, depth=3, vocab=40):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d) for _ in range(depth))
        self.head = nn.Linear(d, vocab)

    def forward(self, ids, scale=1.0):
        h = self.embed(ids)
        for layer in self.layers:
            h = layer(h, scale=scale)
        return self.head(h)
