import cv2
import numpy as np
import pytest
import torch
from skimage import data

from train_host.backbone import Backbone, imagenet_classifier, loss_backbone
from train_host.config import BackboneConfig

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_pretrained_weights_classify_chelsea_as_a_cat():
    photo = cv2.resize(data.chelsea(), (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    image = torch.from_numpy((photo - 127.0) / 128.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        probabilities = imagenet_classifier()(image).softmax(dim=1)[0]
    top = int(probabilities.argmax())
    assert top in IMAGENET_CATS, f"top class {top}"
    assert float(probabilities[list(IMAGENET_CATS)].sum()) > 0.5


def test_stage_outputs_have_expected_strides_and_widths():
    backbone = Backbone([1, 2, 4], (64, 96)).eval()
    with torch.inference_mode():
        stages = backbone(torch.zeros(2, 1, 64, 96))
    assert [tuple(s.shape) for s in stages] == [(2, 24, 16, 24), (2, 40, 8, 12), (2, 112, 4, 6)]


def test_mirrored_border_gives_edge_patches_what_interior_patches_see():
    # A uniform image is uniform at every position; only the convolutions' zero padding makes the edge of
    # its stride-8 map differ from the centre, and the mirrored border removes that.
    image = torch.full((1, 1, 128, 128), 0.2)

    def edge_deviation(border: int) -> float:
        with torch.inference_mode():
            stage = Backbone([2], (128, 128), border).eval()(image)[0]
        centre = stage[..., 8:9, 8:9]
        return float((stage - centre).abs().max() / centre.abs().max())

    assert tuple(Backbone([2], (128, 128), 32).eval()(image)[0].shape) == (1, 40, 16, 16)
    assert edge_deviation(0) > 0.3
    assert edge_deviation(32) < 0.01


def test_border_must_be_a_multiple_of_the_coarsest_stride():
    with pytest.raises(ValueError, match="multiple of 32"):
        Backbone([2], (128, 128), 16)


def test_the_feature_loss_backbone_has_the_map_stages_and_no_border():
    config = BackboneConfig()
    assert config.border_for((128, 128)) > 0
    backbone = loss_backbone(config, (128, 128))
    assert backbone.border == 0
    assert backbone.stages == sorted(config.map_stages)
