"""Test-only mirror of task-vectors' `src/modeling.py`, so fixtures are pickled exactly like the
public checkpoints (`torch.save(module)` of these classes). The loader under test never imports it.
"""

import torch


class ImageEncoder(torch.nn.Module):
    def __init__(self, clip_model, train_preprocess=None, val_preprocess=None, keep_lang=False):
        super().__init__()
        self.model = clip_model
        self.train_preprocess = train_preprocess
        self.val_preprocess = val_preprocess
        self.cache_dir = "/home/someone/cache"
        if not keep_lang and hasattr(self.model, "transformer"):
            delattr(self.model, "transformer")

    def forward(self, images):
        return self.model.encode_image(images)


class ClassificationHead(torch.nn.Linear):
    def __init__(self, normalize, weights, biases=None):
        output_size, input_size = weights.shape
        super().__init__(input_size, output_size)
        self.normalize = normalize
        if weights is not None:
            self.weight = torch.nn.Parameter(weights.clone())
        if biases is not None:
            self.bias = torch.nn.Parameter(biases.clone())
        else:
            self.bias = torch.nn.Parameter(torch.zeros_like(self.bias))

    def forward(self, inputs):
        if self.normalize:
            inputs = inputs / inputs.norm(dim=-1, keepdim=True)
        return super().forward(inputs)
