"""The contracts transformers' common processor tests hold image processors (`ImageProcessingTestMixin`) and
audio feature extractors (`SequenceFeatureExtractionTestMixin`, `FeatureExtractionSavingTestMixin`) to, asserted
against `VQVAEImageProcessor` and `VQVAEFeatureExtractor`.

Written from reading transformers' tests/test_image_processing_common.py and
tests/test_sequence_feature_extraction_common.py. Not asserted: equivalence between processor backends (there is
one, PIL: transformers asks new processors for a torchvision backend too, and no CPU build of torchvision
installs on our machines) and compiling the torchvision backend.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoFeatureExtractor, AutoImageProcessor, BatchFeature
from transformers.testing_utils import check_json_file_has_correct_format

from vq_tokenizer import VQVAEFeatureExtractor, VQVAEImageProcessor
from vq_tokenizer.image_processing_vqvae import VQVAEImageProcessorKwargs

IMAGE_KWARGS = dict(
    num_channels=3,
    do_resize=True,
    size={"height": 20, "width": 24},
    image_mean=[0.25, 0.5, 0.75],
    image_std=[0.5, 0.25, 1.0],
    size_divisor=8,
    padding_mode="constant",
)


def random_images(count: int, channels: int, kind: str, seed: int = 0, low: int = 16, high: int = 40) -> list:
    """`count` uint8 images of different sizes: PIL, NumPy channels-last, or torch channels-first."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        height, width = rng.integers(low, high, 2)
        array = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        if kind == "pil":
            images.append(Image.fromarray(array[..., 0] if channels == 1 else array))
        elif kind == "numpy":
            images.append(array)
        else:
            images.append(torch.from_numpy(array).permute(2, 0, 1).contiguous())
    return images


# ======================================================================================== image processor


def test_image_processor_json_and_pretrained_round_trips(tmp_path):
    processor = VQVAEImageProcessor(**IMAGE_KWARGS)
    saved = json.loads(processor.to_json_string())
    for key, value in IMAGE_KWARGS.items():
        assert saved[key] == value, key

    processor.to_json_file(tmp_path / "processor.json")
    assert VQVAEImageProcessor.from_json_file(tmp_path / "processor.json").to_dict() == processor.to_dict()

    saved_file = processor.save_pretrained(tmp_path / "saved")[0]
    check_json_file_has_correct_format(saved_file)
    assert VQVAEImageProcessor.from_pretrained(tmp_path / "saved").to_dict() == processor.to_dict()
    auto = AutoImageProcessor.from_pretrained(tmp_path / "saved")
    assert type(auto) is VQVAEImageProcessor and auto.to_dict() == processor.to_dict()


def test_image_processor_attributes_from_kwargs_and_from_dict():
    for processor in (
        VQVAEImageProcessor(**IMAGE_KWARGS),
        VQVAEImageProcessor.from_dict(IMAGE_KWARGS),
    ):
        for key, value in IMAGE_KWARGS.items():
            actual = getattr(processor, key)
            if key == "size":
                actual = dict(actual)
            elif isinstance(actual, tuple):
                actual = list(actual)
            assert actual == value, key
    assert VQVAEImageProcessor.from_dict(IMAGE_KWARGS, do_normalize=False).do_normalize is False
    assert VQVAEImageProcessor.from_dict(IMAGE_KWARGS, do_convert_rgb=False).do_convert_rgb is False
    assert VQVAEImageProcessor().to_dict()  # builds without arguments
    assert VQVAEImageProcessor.valid_kwargs is VQVAEImageProcessorKwargs


def test_instances_do_not_share_mutable_attributes():
    first, second = VQVAEImageProcessor(**IMAGE_KWARGS), VQVAEImageProcessor(**IMAGE_KWARGS)
    first.size["height"] = -1
    assert second.size["height"] == 20
    if isinstance(first.image_mean, list):  # a tuple cannot be changed in place at all
        first.image_mean[0] = -1
    assert second.image_mean[0] == 0.25
    assert VQVAEImageProcessor.size is None and VQVAEImageProcessor.image_mean == 0.5


@pytest.mark.parametrize("kind", ["pil", "numpy", "torch"])
def test_image_processor_single_and_batched_calls(kind):
    processor = VQVAEImageProcessor(**IMAGE_KWARGS)
    images = random_images(5, 3, kind)
    single = processor(images[0], return_tensors="pt").pixel_values
    assert isinstance(single, torch.Tensor) and single.dtype == torch.float32
    assert tuple(single.shape) == (1, 3, 24, 24)  # resized to 20 x 24, padded to multiples of 8
    batch = processor(images, return_tensors="pt").pixel_values
    assert tuple(batch.shape) == (5, 3, 24, 24)
    assert torch.equal(batch[:1], single)

    as_numpy = processor(images, return_tensors="np").pixel_values
    assert isinstance(as_numpy, np.ndarray) and np.array_equal(as_numpy, batch.numpy())


def test_unresized_images_are_padded_to_the_size_divisor():
    processor = VQVAEImageProcessor(num_channels=1, size_divisor=4)
    features = processor(np.zeros((27, 29), dtype=np.uint8), return_tensors="pt")
    assert tuple(features.pixel_values.shape) == (1, 1, 28, 32)
    assert features.original_sizes == [(27, 29)]


@pytest.mark.parametrize("num_channels", [1, 3])
@pytest.mark.parametrize("input_channels", [1, 3, 4])
def test_any_input_channel_count_becomes_the_processors(num_channels, input_channels):
    processor = VQVAEImageProcessor(num_channels=num_channels)
    images = random_images(2, input_channels, "numpy", low=8, high=9)
    pixel_values = processor(images, return_tensors="pt").pixel_values
    assert tuple(pixel_values.shape) == (2, num_channels, 8, 8)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_per_channel_mean_and_std_normalise_each_channel(channels):
    """One value per channel of what is normalised, for any channel count; a 4-channel image is kept as such
    when `do_convert_rgb=False` (transformers' `test_call_numpy_4_channels`)."""
    rng = np.random.default_rng(channels)
    image = rng.integers(0, 256, (8, 12, channels), dtype=np.uint8)
    mean = [0.1 * (c + 1) for c in range(channels)]
    std = [0.5 / (c + 1) for c in range(channels)]
    processor = VQVAEImageProcessor(num_channels=1 if channels == 1 else 3)
    pixel_values = processor(
        image,
        do_convert_rgb=False,
        input_data_format="channels_last",
        image_mean=mean,
        image_std=std,
        return_tensors="pt",
    ).pixel_values
    assert tuple(pixel_values.shape) == (1, channels, 8, 12)
    expected = (image.astype(np.float32) / 255 - np.asarray(mean, dtype=np.float32)) / np.asarray(
        std, dtype=np.float32
    )
    np.testing.assert_allclose(pixel_values[0].permute(1, 2, 0).numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_mixed_input_types_in_one_batch(channels):
    """PIL, NumPy channels-last and channels-first, torch channels-last and channels-first, one at a time and as
    one batch (transformers' `test_convert_to_rgb_mixed_input_batch`)."""
    array = np.random.default_rng(0).integers(0, 256, (40, 100, channels), dtype=np.uint8)
    first = np.ascontiguousarray(array.transpose(2, 0, 1))
    inputs = [
        Image.fromarray(array[..., 0] if channels == 1 else array),
        array,
        first,
        torch.from_numpy(array),
        torch.from_numpy(first),
    ]
    processor = VQVAEImageProcessor()
    singles = [processor(image, do_convert_rgb=True, return_tensors="pt").pixel_values for image in inputs]
    batch = processor(inputs, do_convert_rgb=True, return_tensors="pt").pixel_values
    assert tuple(batch.shape) == (5, 3, 40, 100)
    for index, single in enumerate(singles):
        assert torch.equal(batch[index : index + 1], single), index
    if channels != 4:  # RGBA through PIL is another path (alpha dropped by PIL): same values otherwise
        assert all(torch.equal(single, singles[0]) for single in singles)


def test_batch_feature_casts_floats_only():
    processor = VQVAEImageProcessor(**IMAGE_KWARGS)
    images = random_images(2, 3, "torch")
    features = processor(images, return_tensors="pt")
    assert features.pixel_values.device.type == "cpu" and features.pixel_values.dtype == torch.float32
    assert processor(images, return_tensors="pt").to(torch.float16).pixel_values.dtype == torch.float16
    assert (
        processor(images, return_tensors="pt").to("cpu", torch.bfloat16).pixel_values.dtype == torch.bfloat16
    )
    with pytest.raises(TypeError):
        processor(images, return_tensors="pt").to(torch.bfloat16, "cpu")
    features.update({"input_ids": torch.LongTensor([[1, 2, 3], [4, 5, 6]])})
    features = features.to(torch.float16)
    assert features.pixel_values.dtype == torch.float16 and features.input_ids.dtype == torch.long


def test_unknown_call_arguments_are_refused():
    with pytest.raises(TypeError, match="extra_argument"):
        VQVAEImageProcessor()(np.zeros((8, 8), dtype=np.uint8), extra_argument=True)


# ======================================================================================= feature extractor

FE_KWARGS = dict(feature_size=1, sampling_rate=16000, padding_value=0.0, hop_length=16)
MIN_LENGTH, MAX_LENGTH, BATCH = 40, 200, 7
LENGTHS = list(range(MIN_LENGTH, MAX_LENGTH, (MAX_LENGTH - MIN_LENGTH) // (BATCH - 1)))


def speech(equal_length: bool = False, numpify: bool = False, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    lengths = [MAX_LENGTH] * BATCH if equal_length else LENGTHS
    items = [rng.uniform(-1, 1, length).astype(np.float32) for length in lengths]
    return items if numpify else [item.tolist() for item in items]


def test_feature_extractor_json_and_pretrained_round_trips(tmp_path):
    extractor = VQVAEFeatureExtractor(**FE_KWARGS)
    saved = json.loads(extractor.to_json_string())
    for key, value in FE_KWARGS.items():
        assert saved[key] == value, key
    extractor.to_json_file(tmp_path / "fe.json")
    assert VQVAEFeatureExtractor.from_json_file(tmp_path / "fe.json").to_dict() == extractor.to_dict()
    saved_file = extractor.save_pretrained(tmp_path / "saved")[0]
    check_json_file_has_correct_format(saved_file)
    assert VQVAEFeatureExtractor.from_pretrained(tmp_path / "saved").to_dict() == extractor.to_dict()
    auto = AutoFeatureExtractor.from_pretrained(tmp_path / "saved")
    assert type(auto) is VQVAEFeatureExtractor and auto.to_dict() == extractor.to_dict()
    default = VQVAEFeatureExtractor()
    assert all(hasattr(default, name) for name in ("feature_size", "sampling_rate", "padding_value"))


@pytest.mark.parametrize("tensor_type", ["np", "pt"])
def test_batch_feature_of_raw_speech(tensor_type):
    name = VQVAEFeatureExtractor.model_input_names[0]
    ragged = BatchFeature({name: speech()})
    assert [len(item) for item in ragged[name]] == LENGTHS
    batch = BatchFeature({name: speech(equal_length=True)}, tensor_type=tensor_type)[name]
    assert tuple(batch.shape) == (BATCH, MAX_LENGTH)


@pytest.mark.parametrize("numpify", [False, True])
def test_pad(numpify):
    extractor = VQVAEFeatureExtractor(**FE_KWARGS)
    name = extractor.model_input_names[0]
    features = BatchFeature({name: speech(numpify=numpify)})
    unpadded = extractor.pad(features, padding=False)[name]
    assert [len(item) for item in unpadded] == LENGTHS
    longest = extractor.pad(features, padding="longest")[name]
    assert {len(item) for item in longest} == {LENGTHS[-1]}
    to_max = extractor.pad(features, padding="max_length", max_length=LENGTHS[-1])[name]
    assert all(np.allclose(a, b) for a, b in zip(longest, to_max, strict=True))
    with pytest.raises(ValueError):
        extractor.pad(features, padding="max_length")
    as_array = extractor.pad(features, padding="max_length", max_length=MAX_LENGTH + 5, return_tensors="np")[
        name
    ]
    assert as_array.shape == (BATCH, MAX_LENGTH + 5)
    assert np.all(as_array[0, MIN_LENGTH:] == extractor.padding_value)

    multiple = extractor.pad(features, pad_to_multiple_of=10)[name]
    assert all(len(item) % 10 == 0 for item in multiple)
    padded = extractor.pad(features, padding="max_length", max_length=MAX_LENGTH + 5, pad_to_multiple_of=10)[
        name
    ]
    assert {len(item) for item in padded} == {210}

    as_tensor = extractor.pad(features, padding="longest", return_tensors="pt")[name]
    as_numpy = extractor.pad(features, padding="longest", return_tensors="np")[name]
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_allclose(as_tensor.numpy(), as_numpy)


@pytest.mark.parametrize("numpify", [False, True])
def test_truncation(numpify):
    extractor = VQVAEFeatureExtractor(**FE_KWARGS)
    name = extractor.model_input_names[0]
    features = BatchFeature({name: speech(numpify=numpify)})
    shortest = LENGTHS[0]
    truncated = extractor.pad(features, padding="max_length", max_length=shortest, truncation=True)[name]
    assert {len(item) for item in truncated} == {shortest}
    not_truncated = extractor.pad(features, padding="max_length", max_length=shortest)[name]
    assert [len(item) for item in not_truncated] == LENGTHS
    middle = extractor.pad(
        features, padding="max_length", max_length=LENGTHS[1], truncation=True, return_tensors="np"
    )[name]
    assert middle.shape == (BATCH, LENGTHS[1])
    for bad in (
        {"truncation": True},
        {"padding": "longest", "truncation": True},
        {"padding": "max_length", "truncation": True},
    ):
        with pytest.raises(ValueError):
            extractor.pad(features, **bad)
    rounded = extractor.pad(
        features, padding="max_length", max_length=shortest, pad_to_multiple_of=12, truncation=True
    )[name]
    assert {len(item) for item in rounded} == {-(-shortest // 12) * 12}


def test_attention_mask_from_pad():
    extractor = VQVAEFeatureExtractor(**FE_KWARGS, return_attention_mask=True)
    name = extractor.model_input_names[0]
    padded = extractor.pad(BatchFeature({name: speech()}), padding="longest", return_tensors="np")
    assert padded.attention_mask.shape == padded[name].shape[:2]
    assert padded.attention_mask.sum(-1).tolist() == LENGTHS
    cut = extractor.pad(
        BatchFeature({name: speech()}),
        padding="max_length",
        max_length=LENGTHS[0],
        truncation=True,
        return_tensors="np",
    )
    assert (
        cut.attention_mask.shape == (BATCH, LENGTHS[0])
        and cut.attention_mask.sum(-1).tolist() == [LENGTHS[0]] * BATCH
    )


@pytest.mark.parametrize("feature_size", [1, 2])
@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_feature_extractor_call_pads_to_the_hop_length(feature_size, return_tensors):
    extractor = VQVAEFeatureExtractor(**{**FE_KWARGS, "feature_size": feature_size})
    items = speech(numpify=True)
    batch = extractor(items, sampling_rate=16000, return_tensors=return_tensors)
    padded_length = -(-LENGTHS[-1] // 16) * 16
    assert tuple(batch.input_values.shape) == (BATCH, feature_size, padded_length)
    assert tuple(batch.padding_mask.shape) == (BATCH, padded_length)
    assert np.asarray(batch.padding_mask).sum(-1).tolist() == LENGTHS
    single = extractor(items[0], sampling_rate=16000, return_tensors=return_tensors)
    np.testing.assert_allclose(
        np.asarray(single.input_values)[0, :, : LENGTHS[0]],
        np.asarray(batch.input_values)[0, :, : LENGTHS[0]],
    )
