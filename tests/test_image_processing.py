"""VQVAEImageProcessor on real images: round trips, padding, channel conversion, save/load, errors."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from vq_tokenizer.image_processing_vqvae import VQVAEImageProcessor


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()  # 512x512x3 uint8


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return data.camera()  # 512x512 uint8


# -------------------------------------------------------------------------------------------- round trips


def test_round_trip_astronaut_rgb_is_exact(astronaut):
    processor = VQVAEImageProcessor()
    crop = astronaut[:203, 5:306]  # odd sizes, so padding really happens
    inputs = processor(Image.fromarray(crop), return_tensors="pt")
    assert inputs.pixel_values.shape == (1, 3, 204, 304)
    assert inputs.pixel_values.dtype == torch.float32
    assert inputs.original_sizes == [(203, 301)]
    assert inputs.pixel_values.min() >= -1 and inputs.pixel_values.max() <= 1

    (image,) = processor.postprocess(inputs.pixel_values, original_sizes=inputs.original_sizes)
    assert image.mode == "RGB" and image.size == (301, 203)
    np.testing.assert_array_equal(np.asarray(image), crop)

    full = processor(astronaut, return_tensors="pt")
    np.testing.assert_array_equal(np.asarray(processor.postprocess(full.pixel_values)[0]), astronaut)


def test_round_trip_camera_gray_is_exact_through_every_output_type(camera):
    processor = VQVAEImageProcessor(num_channels=1, size_divisor=8)
    crops = [camera[:61, :77], camera[300:361, 100:177]]
    inputs = processor(crops, return_tensors="pt")
    assert inputs.pixel_values.shape == (2, 1, 64, 80)

    images = processor.postprocess(inputs.pixel_values, original_sizes=inputs.original_sizes)
    assert [image.mode for image in images] == ["L", "L"]
    for image, crop in zip(images, crops, strict=True):
        np.testing.assert_array_equal(np.asarray(image), crop)

    as_np = processor.postprocess(inputs.pixel_values, output_type="np", original_sizes=inputs.original_sizes)
    assert as_np.shape == (2, 61, 77, 1) and as_np.dtype == np.float32
    np.testing.assert_array_equal(np.round(as_np[..., 0] * 255).astype(np.uint8), np.stack(crops))

    as_pt = processor.postprocess(inputs.pixel_values, output_type="pt", original_sizes=inputs.original_sizes)
    assert as_pt.shape == (2, 1, 61, 77)
    torch.testing.assert_close(as_pt, torch.from_numpy(as_np).permute(0, 3, 1, 2))


def test_postprocess_clamps_and_checks_its_arguments():
    processor = VQVAEImageProcessor()
    out = processor.postprocess(torch.linspace(-3, 3, 3 * 8 * 8).reshape(1, 3, 8, 8), output_type="pt")
    assert out.min() == 0 and out.max() == 1
    with pytest.raises(ValueError, match="output_type"):
        processor.postprocess(torch.zeros(1, 3, 8, 8), output_type="jpeg")
    with pytest.raises(ValueError, match="C = 1 or 3"):
        processor.postprocess(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="differ across the batch"):
        processor.postprocess(torch.zeros(2, 3, 8, 8), output_type="np", original_sizes=[(8, 8), (7, 8)])
    with pytest.raises(ValueError, match="do not fit"):
        processor.postprocess(torch.zeros(1, 3, 8, 8), original_sizes=[(9, 8)])


# ------------------------------------------------------------------------------------------------ padding


@pytest.mark.parametrize(("size_divisor", "expected"), [(4, (28, 32)), (8, (32, 32)), (1, (27, 29))])
def test_pads_odd_sizes_to_a_multiple(camera, size_divisor, expected):
    processor = VQVAEImageProcessor(num_channels=1, size_divisor=size_divisor)
    crop = camera[200:227, 250:279]  # 27x29
    pixel_values = processor(crop, return_tensors="np").pixel_values
    assert pixel_values.shape == (1, 1, *expected)
    unpadded = crop / 255 * 2 - 1
    np.testing.assert_allclose(pixel_values[0, 0, :27, :29], unpadded, atol=1e-6)
    if expected[0] > 27:  # reflect: row 27 mirrors row 25, column 29 mirrors column 27
        np.testing.assert_array_equal(pixel_values[0, 0, 27, :29], pixel_values[0, 0, 25, :29])
        np.testing.assert_array_equal(pixel_values[0, 0, :27, 29], pixel_values[0, 0, :27, 27])


def test_constant_padding_and_no_padding(camera):
    crop = camera[200:227, 250:279]
    constant = VQVAEImageProcessor(num_channels=1, padding_mode="constant")(crop, return_tensors="np")
    assert constant.pixel_values.shape == (1, 1, 28, 32)
    assert (constant.pixel_values[0, 0, 27:, :] == 0).all() and (
        constant.pixel_values[0, 0, :, 29:] == 0
    ).all()
    unpadded = VQVAEImageProcessor(num_channels=1, do_pad=False)(crop, return_tensors="np")
    assert unpadded.pixel_values.shape == (1, 1, 27, 29)


# --------------------------------------------------------------------------------------- channels, inputs


def test_rgb_to_gray_matches_pil_and_gray_to_rgb_repeats(astronaut, camera):
    crop = astronaut[100:164, 200:264]
    gray = VQVAEImageProcessor(num_channels=1)(crop, return_tensors="np").pixel_values
    assert gray.shape == (1, 1, 64, 64)
    pil_gray = np.asarray(Image.fromarray(crop).convert("L"))
    np.testing.assert_allclose(gray[0, 0], pil_gray / 255 * 2 - 1, atol=1e-6)

    rgb = VQVAEImageProcessor(num_channels=3)(camera[:32, :32], return_tensors="np").pixel_values
    assert rgb.shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(rgb[0, 0], rgb[0, 1])
    np.testing.assert_array_equal(rgb[0, 0], rgb[0, 2])


def test_alpha_is_dropped(astronaut):
    processor = VQVAEImageProcessor()
    crop = astronaut[:32, :32]
    rgba = np.concatenate([crop, np.full((32, 32, 1), 77, dtype=np.uint8)], axis=-1)
    expected = processor(crop, return_tensors="np").pixel_values
    np.testing.assert_array_equal(processor(rgba, return_tensors="np").pixel_values, expected)
    np.testing.assert_array_equal(
        processor(Image.fromarray(rgba), return_tensors="np").pixel_values, expected
    )
    gray_alpha = Image.fromarray(crop[..., 0]).convert("LA")
    np.testing.assert_array_equal(
        VQVAEImageProcessor(num_channels=1)(gray_alpha, return_tensors="np").pixel_values[0, 0],
        VQVAEImageProcessor(num_channels=1)(crop[..., 0], return_tensors="np").pixel_values[0, 0],
    )


def test_every_input_type_gives_the_same_pixel_values(astronaut):
    processor = VQVAEImageProcessor()
    hwc = astronaut[:40, :48]
    expected = processor(hwc, return_tensors="pt").pixel_values
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    same = [
        Image.fromarray(hwc),
        chw,
        torch.from_numpy(chw),
        [torch.from_numpy(chw)],
        (hwc,),
        torch.from_numpy(chw)[None],  # a 4-D batch
        hwc.astype(np.float32) / 255,  # floats in [0, 1] are not rescaled again
        torch.from_numpy(chw).to(torch.bfloat16) / 255,
    ]
    for index, image in enumerate(same):
        atol = 1e-2 if index == len(same) - 1 else 1e-6  # bfloat16 keeps ~3 significant digits
        torch.testing.assert_close(
            processor(image, return_tensors="pt").pixel_values, expected, atol=atol, rtol=0
        )

    batch = processor([hwc, Image.fromarray(hwc), chw], return_tensors="pt")
    assert batch.pixel_values.shape == (3, 3, 40, 48)
    assert batch.original_sizes == [(40, 48)] * 3
    # A channels-first image whose channel axis is ambiguous is resolved by input_data_format.
    tiny = np.stack([np.zeros((3, 3)), np.ones((3, 3)), np.zeros((3, 3))]).astype(np.float32)
    out = processor(tiny, input_data_format="channels_first", do_pad=False, return_tensors="np").pixel_values
    np.testing.assert_array_equal(out[0, :, 0, 0], [-1, 1, -1])


def test_default_return_type_is_a_stacked_numpy_batch(camera):
    out = VQVAEImageProcessor(num_channels=1)([camera[:8, :8], camera[8:16, :8]])
    assert isinstance(out.pixel_values, np.ndarray) and out.pixel_values.shape == (2, 1, 8, 8)
    assert out.pixel_values.dtype == np.float32
    assert out.original_sizes == [(8, 8), (8, 8)]


def test_resize_brings_mixed_sizes_to_one(astronaut):
    processor = VQVAEImageProcessor(do_resize=True, size={"height": 30, "width": 40})
    images = [astronaut[:100, :120], astronaut[:64, :64]]
    inputs = processor(images, return_tensors="np")
    assert inputs.pixel_values.shape == (2, 3, 32, 40)
    assert inputs.original_sizes == [(30, 40), (30, 40)]
    # Same as PIL's own bicubic resize of the uint8 image, up to its 8-bit rounding and clipping.
    pil_resized = np.asarray(Image.fromarray(images[0]).resize((40, 30), Image.Resampling.BICUBIC))
    back = processor.postprocess(inputs.pixel_values, output_type="np", original_sizes=inputs.original_sizes)
    assert np.abs(back[0] * 255 - pil_resized).max() <= 1.0

    with pytest.raises(ValueError, match=r"different sizes.*size="):
        VQVAEImageProcessor()(images)


# ------------------------------------------------------------------------------------------------ save/load


def test_save_and_load_keep_every_option(tmp_path, camera):
    processor = VQVAEImageProcessor(
        num_channels=1,
        do_resize=True,
        size={"height": 26, "width": 30},
        resample=Image.Resampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.25],
        image_std=[0.3],
        do_pad=True,
        size_divisor=8,
        padding_mode="constant",
    )
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    loaded = VQVAEImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    for name in [
        "num_channels",
        "do_resize",
        "resample",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "do_pad",
        "size_divisor",
        "padding_mode",
    ]:
        assert getattr(loaded, name) == getattr(processor, name), name
    assert dict(loaded.size) == {"height": 26, "width": 30}
    assert tuple(loaded.image_mean) == (0.25,) and tuple(loaded.image_std) == (0.3,)
    np.testing.assert_array_equal(
        loaded(camera[:50, :50], return_tensors="np").pixel_values,
        processor(camera[:50, :50], return_tensors="np").pixel_values,
    )
    assert processor(camera[:50, :50], return_tensors="np").pixel_values.shape == (1, 1, 32, 32)

    # Defaults survive too, and call-time arguments override saved ones without changing them.
    default = VQVAEImageProcessor()
    default.save_pretrained(tmp_path / "default")
    reloaded = VQVAEImageProcessor.from_pretrained(tmp_path / "default")
    assert reloaded.to_dict() == default.to_dict()
    assert reloaded(camera[:9, :9], size_divisor=2, return_tensors="np").pixel_values.shape == (1, 3, 10, 10)
    assert reloaded.size_divisor == 4


def test_sixteen_bit_images_are_scaled_to_8_bits_like_files(camera, tmp_path):
    """One policy with media_io.load_image: 16-bit images become 8-bit, whatever form they come in."""
    from vq_tokenizer.media_io import load_image

    sixteen_bit = camera[:16, :16].astype(np.uint16) * 257  # 255 * 257 = 65535
    processor = VQVAEImageProcessor(num_channels=1)
    expected = processor(camera[:16, :16], return_tensors="np").pixel_values
    Image.fromarray(sixteen_bit).save(tmp_path / "camera16.png")
    for image in [
        Image.fromarray(sixteen_bit),  # mode I;16
        Image.fromarray(sixteen_bit.astype(np.int32)),  # mode I, how older Pillow opened 16-bit PNGs
        sixteen_bit,
        torch.from_numpy(sixteen_bit.astype(np.int32)).to(torch.uint16),
        load_image(tmp_path / "camera16.png"),
    ]:
        np.testing.assert_array_equal(processor(image, return_tensors="np").pixel_values, expected)
    # The old advice for 16-bit inputs would now darken them silently, so it is refused.
    with pytest.raises(ValueError, match="16-bit image.*scaled to 8 bits"):
        VQVAEImageProcessor(num_channels=1, rescale_factor=1 / 65535)(Image.fromarray(sixteen_bit))


def test_four_channel_images_take_per_channel_mean_and_std(astronaut):
    """transformers' convention: one mean/std value per channel; for RGBA inputs the alpha value goes with alpha."""
    crop = astronaut[:24, :20]
    rgba_last = np.concatenate([crop, np.full((24, 20, 1), 200, np.uint8)], axis=-1)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.2)
    expected = (crop.transpose(2, 0, 1) / 255 - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
    processor = VQVAEImageProcessor(do_pad=False)
    for image, options in [
        (rgba_last, {"input_data_format": "channels_last"}),
        (rgba_last, {}),
        (np.ascontiguousarray(rgba_last.transpose(2, 0, 1)), {}),
        (rgba_last.astype(np.float32) / 255, {}),
        (Image.fromarray(rgba_last), {}),
    ]:
        for stats in [(mean, std), ((*mean, 0.0), (*std, 1.0))]:
            out = processor(image, image_mean=stats[0], image_std=stats[1], return_tensors="np", **options)
            np.testing.assert_allclose(out.pixel_values[0], expected, atol=1e-5)
    # Saved with four values, it still postprocesses its three output channels.
    four = VQVAEImageProcessor(image_mean=[*mean, 0.0], image_std=[*std, 1.0])
    back = four.postprocess(four(rgba_last, return_tensors="pt").pixel_values)[0]
    np.testing.assert_array_equal(np.asarray(back)[:24, :20], crop)
    with pytest.raises(ValueError, match="4 values, which fit only RGBA inputs"):
        four(crop)
    gray = VQVAEImageProcessor(num_channels=1, image_mean=[0.25], image_std=[0.5])
    assert gray(rgba_last, return_tensors="np").pixel_values.shape == (1, 1, 24, 20)


# ---------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((16, 16, 2), dtype=np.uint8), "has 2 channels"),
        (np.zeros((16, 16, 5), dtype=np.uint8), "has 5 channels"),
        (torch.zeros(5, 16, 16), "has 5 channels"),
        (np.full((16, 16), np.nan, dtype=np.float32), "NaN or infinite"),
        (np.full((16, 16, 3), np.inf, dtype=np.float32), "NaN or infinite"),
        (np.full((16, 16), 255.0, dtype=np.float32), r"must lie in \[0, 1\]"),
        (np.full((16, 16), 4000, dtype=np.int16), "rescale_factor=1/32767"),
        (np.zeros((0, 16), dtype=np.uint8), "is empty"),
        (Image.new("L", (0, 5)), "is empty"),
        ([], "No images were given"),
        (np.zeros((0, 3, 8, 8), dtype=np.uint8), "No images were given"),
        ("astronaut.png", "unsupported type str.*PIL.Image.open"),
        ({"pixels": 1}, "unsupported type dict"),
        (np.zeros((2, 2, 2, 2, 2)), "expected HW, HWC or CHW"),
        (np.zeros((4, 4), dtype=np.complex64), "dtype complex64"),
    ],
)
def test_bad_inputs_say_what_is_wrong(image, message):
    with pytest.raises(ValueError, match=message):
        VQVAEImageProcessor()(image)


def test_the_failing_image_of_a_batch_is_named():
    good = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="Image 1 has 2 channels"):
        VQVAEImageProcessor()([good, np.zeros((8, 8, 2), dtype=np.uint8)])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_channels": 2}, "num_channels must be 1"),
        ({"padding_mode": "wrap"}, "padding_mode must be one of"),
        ({"size_divisor": 0}, "size_divisor must be a positive int"),
        ({"image_mean": [0.5, 0.5]}, "one value per output channel"),
        ({"image_std": 0.0}, "image_std must be non-zero"),
        ({"do_resize": True}, "size"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        VQVAEImageProcessor(**options)(np.zeros((8, 8, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------ remote code

REMOTE_CHILD = """
import sys

for name in ("vq_tokenizer", "scipy", "soundfile"):  # neither the package nor the audio extra
    sys.modules[name] = None
import numpy as np
from transformers import AutoImageProcessor

processor = AutoImageProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
np.save(sys.argv[2], processor(np.load(sys.argv[3]), return_tensors="np").pixel_values)
"""


def test_saved_processor_loads_as_remote_code_with_media_io(tmp_path, camera):
    import os
    import subprocess
    import sys

    processor = VQVAEImageProcessor(num_channels=1, size_divisor=8)
    processor.save_pretrained(tmp_path / "saved")
    assert {"image_processing_vqvae.py", "media_io.py"} <= set(os.listdir(tmp_path / "saved"))
    image = camera[:30, :30].astype(np.uint16) * 257
    np.save(tmp_path / "image.npy", image)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    subprocess.run(
        [sys.executable, "-c", REMOTE_CHILD, str(tmp_path / "saved"), str(tmp_path / "out.npy"), str(tmp_path / "image.npy")],
        env=env, cwd=tmp_path, check=True, timeout=300,
    )  # fmt: skip
    np.testing.assert_array_equal(
        np.load(tmp_path / "out.npy"), processor(image, return_tensors="np").pixel_values
    )
