"""`pipeline("vq-tokenization")` gives codes and `pipeline("vq-detokenization")` gives images or audio back,
through transformers' own `pipeline()`, for folders saved by the library and, with `trust_remote_code=True`,
in a process where `vq_tokenizer` cannot be imported."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_config
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from vq_tokenizer import VQVAEFeatureExtractor, VQVAEImageProcessor, VQVAEModel
from vq_tokenizer.pipelines import (
    DETOKENIZATION_TASK,
    TOKENIZATION_TASK,
    VQDetokenizationPipeline,
    VQTokenizationPipeline,
)

HOP = 16


def _trained(config) -> VQVAEModel:
    """A tiny model after one training forward (k-means codebook), in eval mode."""
    torch.manual_seed(0)
    model = VQVAEModel(config).train()
    shape = (4, config.in_channels, 16, 16) if config.modality == "image" else (4, config.in_channels, 256)
    with torch.no_grad():
        model(torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    return model.eval()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("image-tokenizer")
    _trained(tiny_config()).save_pretrained(folder)
    VQVAEImageProcessor(num_channels=1, size_divisor=4).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio-tokenizer")
    _trained(tiny_config(modality="audio", hop_length=HOP)).save_pretrained(folder)
    VQVAEFeatureExtractor(hop_length=HOP, sampling_rate=16000).save_pretrained(folder)
    return folder


def _image(seed: int, size=(27, 29)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8))


def _expected_image_codes(folder, image) -> tuple[torch.Tensor, VQVAEModel, VQVAEImageProcessor]:
    model = VQVAEModel.from_pretrained(folder).eval()
    processor = VQVAEImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        codes = model.encode(processor(image, return_tensors="pt").pixel_values).codes[0]
    return codes, model, processor


def test_both_tasks_are_registered_with_transformers():
    assert PIPELINE_REGISTRY.check_task(TOKENIZATION_TASK)[1]["impl"] is VQTokenizationPipeline
    assert PIPELINE_REGISTRY.check_task(DETOKENIZATION_TASK)[1]["impl"] is VQDetokenizationPipeline
    assert {TOKENIZATION_TASK, DETOKENIZATION_TASK} <= set(PIPELINE_REGISTRY.get_supported_tasks())


def test_image_tokenization_gives_the_models_codes(image_folder, tmp_path):
    tokenize = pipeline(TOKENIZATION_TASK, model=str(image_folder))
    assert isinstance(tokenize, VQTokenizationPipeline)
    image = _image(0)
    expected, _, _ = _expected_image_codes(image_folder, image)

    result = tokenize(image)
    assert set(result) == {"codes", "original_size"}
    assert result["original_size"] == (27, 29)
    assert torch.equal(torch.tensor(result["codes"]), expected)  # nested lists of ints by default
    assert expected.shape == (7, 8)  # padded to 28 x 32, downsampled 4x

    path = tmp_path / "image.png"
    image.save(path)
    for same_image in (np.asarray(image), torch.from_numpy(np.array(image)), str(path)):
        assert tokenize(same_image)["codes"] == result["codes"]

    as_tensor = tokenize(image, return_tensors=True)["codes"]
    assert as_tensor.dtype == torch.long and torch.equal(as_tensor, expected)

    batch = tokenize([_image(1), image, _image(2, size=(12, 20))])
    assert [item["original_size"] for item in batch] == [(27, 29), (27, 29), (12, 20)]
    assert batch[1]["codes"] == result["codes"]


def test_image_detokenization_gives_the_decoded_image_back(image_folder):
    tokenize = pipeline(TOKENIZATION_TASK, model=str(image_folder))
    detokenize = pipeline(DETOKENIZATION_TASK, model=str(image_folder))
    assert isinstance(detokenize, VQDetokenizationPipeline)
    image = _image(3)
    codes, model, processor = _expected_image_codes(image_folder, image)
    with torch.no_grad():
        reconstruction = model.decode(codes[None]).reconstruction
    expected = processor.postprocess(reconstruction, original_sizes=[(27, 29)])[0]

    decoded = detokenize(tokenize(image))
    assert isinstance(decoded, Image.Image)
    assert decoded.size == (29, 27) and decoded.mode == "L"
    assert np.array_equal(np.asarray(decoded), np.asarray(expected))

    # The codes alone (no size to crop to) decode to the padded size.
    uncropped = detokenize(codes.numpy())
    assert uncropped.size == (32, 28)
    assert np.array_equal(np.asarray(uncropped)[:27, :29], np.asarray(expected))
    assert len(detokenize([codes, codes.numpy()])) == 2


def test_audio_round_trip_through_both_pipelines(audio_folder):
    tokenize = pipeline(TOKENIZATION_TASK, model=str(audio_folder))
    detokenize = pipeline(DETOKENIZATION_TASK, model=str(audio_folder))
    rng = np.random.default_rng(0)
    waveform = rng.uniform(-0.5, 0.5, 100).astype(np.float32)

    model = VQVAEModel.from_pretrained(audio_folder).eval()
    features = VQVAEFeatureExtractor.from_pretrained(audio_folder)(
        waveform, sampling_rate=16000, return_tensors="pt"
    )
    with torch.no_grad():
        expected_codes = model.encode(input_values=features.input_values).codes[0]
        reconstruction = model.decode(expected_codes[None]).reconstruction

    result = tokenize(waveform, sampling_rate=16000)
    assert result["num_samples"] == 100
    assert torch.equal(torch.tensor(result["codes"]), expected_codes)
    assert len(result["codes"]) == 7  # ceil(100 / 16)
    assert tokenize({"array": waveform, "sampling_rate": 16000})["codes"] == result["codes"]

    audio = detokenize(result)
    assert audio["sampling_rate"] == 16000
    assert audio["audio"].shape == (1, 100)
    np.testing.assert_array_equal(audio["audio"], np.clip(reconstruction[0, :, :100].numpy(), -1, 1))
    assert detokenize(expected_codes)["audio"].shape == (1, 7 * HOP)


def test_audio_file_input(audio_folder, tmp_path):
    soundfile = pytest.importorskip("soundfile")
    waveform = np.random.default_rng(1).uniform(-0.5, 0.5, 160).astype(np.float32)
    path = tmp_path / "clip.wav"
    soundfile.write(path, waveform, 16000, subtype="FLOAT")
    tokenize = pipeline(TOKENIZATION_TASK, model=str(audio_folder))
    assert tokenize(str(path)) == tokenize(waveform, sampling_rate=16000)


def test_bad_calls_say_what_to_pass(image_folder, audio_folder):
    detokenize = pipeline(DETOKENIZATION_TASK, model=str(image_folder))
    with pytest.raises(ValueError, match=r"\[h, w\]"):
        detokenize(np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="codes"):
        detokenize({"original_size": (4, 4)})
    with pytest.raises(ValueError, match=r"\[0, 31\]"):
        detokenize(np.full((2, 2), 99))
    with pytest.raises(TypeError, match="top_k"):
        pipeline(TOKENIZATION_TASK, model=str(image_folder), top_k=3)
    with pytest.raises(ValueError, match='"array"'):
        pipeline(TOKENIZATION_TASK, model=str(audio_folder))({"sampling_rate": 16000})
    # A model folder without its processor: the pipeline says which one to save.
    no_processor = VQVAEModel.from_pretrained(image_folder)
    with pytest.raises(ValueError, match="image processor"):
        VQTokenizationPipeline(model=no_processor, task=TOKENIZATION_TASK)(_image(0))


CHILD_SCRIPT = textwrap.dedent(
    """
    import sys

    sys.modules["vq_tokenizer"] = None  # any `import vq_tokenizer` now raises ImportError

    import json

    import numpy as np
    from PIL import Image
    from transformers import pipeline

    folder, image_path = sys.argv[1:3]
    tokenize = pipeline("vq-tokenization", model=folder, trust_remote_code=True)
    detokenize = pipeline("vq-detokenization", model=folder, trust_remote_code=True)
    tokens = tokenize(image_path)
    image = detokenize(tokens)
    print(json.dumps({
        "codes": tokens["codes"],
        "original_size": list(tokens["original_size"]),
        "pixels": np.asarray(image).tolist(),
        "pipeline_modules": [type(tokenize).__module__, type(detokenize).__module__],
        "loaded": sorted(name for name, module in sys.modules.items() if name.startswith("vq_tokenizer") and module),
    }))
    """
)


def test_saved_pipelines_run_as_remote_code_without_the_package(image_folder, tmp_path):
    tokenize = pipeline(TOKENIZATION_TASK, model=str(image_folder))
    folder = tmp_path / "shared"
    tokenize.save_pretrained(folder)
    assert "pipelines.py" in os.listdir(folder)
    custom = json.loads((folder / "config.json").read_text())["custom_pipelines"]
    assert {task: info["impl"] for task, info in custom.items()} == {
        TOKENIZATION_TASK: "pipelines.VQTokenizationPipeline",
        DETOKENIZATION_TASK: "pipelines.VQDetokenizationPipeline",
    }
    image = _image(4)
    image_path = tmp_path / "image.png"
    image.save(image_path)
    expected_tokens = tokenize(image)
    expected_pixels = np.asarray(pipeline(DETOKENIZATION_TASK, model=str(image_folder))(expected_tokens))

    env = dict(
        os.environ,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        HF_HUB_OFFLINE="1",
        PYTHONPATH="",
    )
    script = tmp_path / "child.py"
    script.write_text(CHILD_SCRIPT)
    completed = subprocess.run(
        [sys.executable, str(script), str(folder), str(image_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert all(module.startswith("transformers_modules.") for module in report["pipeline_modules"])
    assert report["codes"] == expected_tokens["codes"]
    assert tuple(report["original_size"]) == expected_tokens["original_size"]
    assert np.array_equal(np.asarray(report["pixels"], dtype=np.uint8), expected_pixels)
