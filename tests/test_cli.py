"""The `vq-tokenizer` command line on real files: a skimage photo as PNG, espeak-ng speech as WAV."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from skimage import data as skimage_data

from vq_tokenizer import VQVAEConfig, VQVAEFeatureExtractor, VQVAEImageProcessor, VQVAEModel
from vq_tokenizer.cli import build_parser, main
from vq_tokenizer.media_io import load_audio

HOP = 16
TINY = dict(hidden_size=16, residual_hidden_size=8, num_residual_layers=1, codebook_size=32, codebook_dim=8)


@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("image-model")
    torch.manual_seed(0)
    VQVAEModel(VQVAEConfig(modality="image", in_channels=1, downsampling_factor=4, **TINY)).save_pretrained(
        folder
    )
    VQVAEImageProcessor(num_channels=1, size_divisor=4).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio-model")
    torch.manual_seed(0)
    VQVAEModel(VQVAEConfig(modality="audio", in_channels=1, hop_length=HOP, **TINY)).save_pretrained(folder)
    VQVAEFeatureExtractor(feature_size=1, sampling_rate=16000, hop_length=HOP).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """skimage's camera photo, shrunk to 45x62 (neither side a multiple of 4), as a PNG."""
    path = tmp_path_factory.mktemp("photo") / "camera.png"
    Image.fromarray(skimage_data.camera()).resize((45, 62), Image.BILINEAR).save(path)
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """A real espeak-ng utterance (22050 Hz mono WAV)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    path = tmp_path_factory.mktemp("speech") / "hello.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Hello there, this is a tokenizer test."], check=True)
    return path


def _load(folder: Path, processor_class):
    return VQVAEModel.from_pretrained(folder).eval(), processor_class.from_pretrained(folder)


def test_png_round_trip(tmp_path, image_model, photo, capsys):
    codes_path, out = tmp_path / "codes.npz", tmp_path / "back.png"
    assert main(["encode", str(photo), "-o", str(codes_path), "--model", str(image_model)]) == 0
    assert main(["decode", str(codes_path), "-o", str(out), "--model", str(image_model)]) == 0
    printed = capsys.readouterr().out
    assert "camera.png: 45x62 px -> 192 codes [16x12]" in printed and f"wrote {out}" in printed

    model, processor = _load(image_model, VQVAEImageProcessor)
    inputs = processor(Image.open(photo), return_tensors="pt")
    with torch.no_grad():
        expected_codes = model.encode(inputs.pixel_values).codes[0]
        expected = processor.postprocess(model.decode(expected_codes[None]).reconstruction, output_type="np")
    with np.load(codes_path) as saved:
        codes = saved["camera.png"]
        metadata = json.loads(str(saved["__metadata__"]))
    assert codes.dtype == np.int64 and codes.tolist() == expected_codes.tolist()
    assert metadata["items"]["camera.png"] == {"modality": "image", "height": 62, "width": 45}
    back = np.asarray(Image.open(out))
    assert back.shape == (62, 45)  # the padding to 64x48 is cropped away
    assert np.array_equal(back, np.round(expected[0, :62, :45, 0] * 255).astype(np.uint8))

    # A .npy holds the codes alone: decoding gives the padded size.
    npy = tmp_path / "codes.npy"
    assert main(["encode", str(photo), "-o", str(npy), "--model", str(image_model)]) == 0
    assert np.load(npy).tolist() == expected_codes.tolist()
    assert main(["decode", str(npy), "-o", str(tmp_path / "padded.png"), "--model", str(image_model)]) == 0
    assert Image.open(tmp_path / "padded.png").size == (48, 64)


def test_espeak_wav_round_trip(tmp_path, audio_model, speech, capsys):
    codes_path, out = tmp_path / "codes.npz", tmp_path / "back.wav"
    assert main(["encode", str(speech), "-o", str(codes_path), "--model", str(audio_model)]) == 0
    captured = capsys.readouterr()
    assert "resampled 22050 Hz to the model's 16000 Hz" in captured.err
    waveform, _ = load_audio(speech, sampling_rate=16000)
    num_samples = waveform.shape[-1]
    frames = -(-num_samples // HOP)
    assert (
        f"hello.wav: {num_samples / 16000:.2f} s -> {frames} codes [{frames}] (1000 tokens/s)" in captured.out
    )

    model, extractor = _load(audio_model, VQVAEFeatureExtractor)
    inputs = extractor(waveform, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        expected_codes = model.encode(inputs.input_values).codes
        expected = extractor.postprocess(model.decode(expected_codes).reconstruction)[0][:, :num_samples]
    with np.load(codes_path) as saved:
        assert saved["hello.wav"].tolist() == expected_codes[0].tolist()

    assert main(["decode", str(codes_path), "-o", str(out), "--model", str(audio_model)]) == 0
    assert "wrote" in capsys.readouterr().out
    back, rate = sf.read(out, dtype="float32", always_2d=True)
    assert rate == 16000 and back.shape == (num_samples, 1)  # the original length, not the padded one
    np.testing.assert_allclose(back[:, 0], expected[0], atol=1.5 / 32768)  # 16-bit PCM


def test_several_inputs_npz_npy_and_a_folder_of_outputs(tmp_path, audio_model, speech, capsys):
    short = tmp_path / "short.flac"
    waveform, rate = load_audio(speech)
    sf.write(short, waveform[0, : rate // 2], rate)
    stereo_8k = tmp_path / "stereo.ogg"  # another rate and two channels: resampled and downmixed
    quiet = load_audio(speech, sampling_rate=8000)[0][0]
    sf.write(stereo_8k, np.stack([quiet, 0.5 * quiet], axis=1), 8000)
    inputs = [str(speech), str(short), str(stereo_8k)]

    assert main(["encode", *inputs, "-o", str(tmp_path / "c.npy"), "--model", str(audio_model)]) == 1
    assert "write a .npz instead" in capsys.readouterr().err

    assert main(["encode", *inputs, "-o", str(tmp_path / "c.npz"), "--model", str(audio_model)]) == 0
    err = capsys.readouterr().err
    assert "stereo.ogg: resampled 8000 Hz" in err and "converted 2 channel(s) to the model's 1" in err
    with np.load(tmp_path / "c.npz") as saved:
        assert sorted(saved.files) == ["__metadata__", "hello.wav", "short.flac", "stereo.ogg"]

    assert (
        main(
            ["decode", str(tmp_path / "c.npz"), "-o", str(tmp_path / "one.wav"), "--model", str(audio_model)]
        )
        == 1
    )
    assert "pass a folder as -o" in capsys.readouterr().err
    out = tmp_path / "decoded"
    assert (
        main(
            [
                "decode",
                str(tmp_path / "c.npz"),
                "-o",
                str(out),
                "--format",
                "flac",
                "--model",
                str(audio_model),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["hello.flac", "short.flac", "stereo.flac"]
    assert sf.info(out / "short.flac").frames == 8000  # half a second at 16 kHz


def test_eval_on_folders_of_files(tmp_path, image_model, audio_model, photo, speech, capsys):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    shutil.copy(photo, images / "camera.png")
    Image.fromarray(skimage_data.astronaut()).resize((40, 32)).save(images / "sub" / "astronaut.jpg")
    Image.fromarray(skimage_data.coins()).resize((45, 62)).save(images / "coins.png")
    pictures = tmp_path / "pictures"
    assert (
        main(["eval", "--model", str(image_model), "--dataset", str(images), "--pictures", str(pictures)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "(3 image files)" in printed
    for label in ("PSNR (dB):", "SSIM:", "codebook usage:", "perplexity:"):
        assert label in printed
    assert (pictures / "reconstructions.png").exists() and (pictures / "codebook_usage.png").exists()

    sounds = tmp_path / "sounds"
    sounds.mkdir()
    shutil.copy(speech, sounds / "hello.wav")
    shutil.copy("/usr/share/sounds/alsa/Front_Center.wav", sounds / "front.wav")
    figures = tmp_path / "figures.json"
    assert main(["eval", "--model", str(audio_model), "--dataset", str(sounds), "--json", str(figures)]) == 0
    printed = capsys.readouterr().out
    assert "(2 audio files)" in printed and "SI-SNR (dB):" in printed and "tokens per second: 1000" in printed
    metrics = json.loads(figures.read_text())
    assert metrics["num_eval_items"] == 2 and np.isfinite(metrics["si_snr"])


def test_errors_are_one_line_with_what_to_do(tmp_path, image_model, audio_model, photo, speech, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    cases = [
        (["encode", str(notes), "-o", "c.npz", "--model", str(audio_model)], "unknown file type '.txt'"),
        (["encode", str(speech), "-o", "c.npz", "--model", str(image_model)], "use an audio tokenizer"),
        (
            ["encode", str(broken), "-o", str(tmp_path / "c.npz"), "--model", str(image_model)],
            "convert it to PNG",
        ),
        (["encode", str(photo), "-o", "codes.txt", "--model", str(image_model)], "a .npy or .npz file"),
        (
            ["encode", str(tmp_path / "missing.wav"), "-o", "c.npz", "--model", str(audio_model)],
            "no such file",
        ),
        (
            ["encode", str(photo), "-o", "c.npz", "--model", str(tmp_path / "no-model")],
            "cannot load a tokenizer",
        ),
        (["decode", str(tmp_path / "none.npy"), "-o", "x.wav", "--model", str(audio_model)], "no such file"),
        (["eval", "--model", str(audio_model), "--dataset", str(tmp_path)], "holds no audio files"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err

    codes = tmp_path / "image-codes.npz"
    assert main(["encode", str(photo), "-o", str(codes), "--model", str(image_model)]) == 0
    capsys.readouterr()
    assert main(["decode", str(codes), "-o", str(tmp_path / "x.wav"), "--model", str(audio_model)]) == 1
    assert "decode with the model that encoded them" in capsys.readouterr().err
    assert main(["decode", str(codes), "-o", str(tmp_path / "x.wav"), "--model", str(image_model)]) == 1
    assert "writes .png" in capsys.readouterr().err


def test_a_16_bit_png_is_scaled_to_8_bits_as_everywhere_else(tmp_path, image_model, photo, capsys):
    sixteen = tmp_path / "camera16.png"
    Image.fromarray(np.asarray(Image.open(photo)).astype(np.uint16) * 257).save(sixteen)  # 0..255 -> 0..65535
    assert Image.open(sixteen).mode == "I;16"
    assert main(["encode", str(sixteen), "-o", str(tmp_path / "16.npy"), "--model", str(image_model)]) == 0
    assert f"{sixteen}: scaled I;16 greyscale to 8 bits" in capsys.readouterr().err
    assert main(["encode", str(photo), "-o", str(tmp_path / "8.npy"), "--model", str(image_model)]) == 0
    assert np.array_equal(np.load(tmp_path / "16.npy"), np.load(tmp_path / "8.npy"))


def test_options_are_spelled_with_underscores_and_the_hyphenated_spelling_works_too(capsys):
    parser = build_parser()
    common = ["--model", "m", "--dataset", "d"]
    for spelling in ("--batch_size", "--batch-size"):
        assert parser.parse_args(["eval", *common, spelling, "4"]).batch_size == 4
        assert parser.parse_args(["encode-dataset", *common, spelling, "4"]).batch_size == 4
    args = parser.parse_args(["encode-dataset", *common, "--output-dir", "o", "--max-samples", "3"])
    assert (args.output_dir, args.max_samples) == ("o", 3)
    args = parser.parse_args(["eval", *common, "--dataset_config", "c", "--max_samples", "2"])
    assert (args.dataset_config, args.max_samples) == ("c", 2)
    for command in ("encode", "decode", "eval", "encode-dataset"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        options = re.findall(r"(?<![\w-])--[\w-]+", capsys.readouterr().out)
        assert options and not [option for option in options if "-" in option[2:]], (command, options)


def test_help_documents_the_output_layouts(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["encode", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert ".npz" in help_text and "--model" in help_text and "one int64 array per input" in help_text


@pytest.mark.parametrize("how", ["console script", "python -m vq_tokenizer", "python -m vq_tokenizer.cli"])
def test_every_entry_point_is_the_same_command(tmp_path, audio_model, how):
    commands = {
        "console script": [str(Path(sys.executable).with_name("vq-tokenizer"))],
        "python -m vq_tokenizer": [sys.executable, "-m", "vq_tokenizer"],
        "python -m vq_tokenizer.cli": [sys.executable, "-m", "vq_tokenizer.cli"],
    }
    command = commands[how]
    if how == "console script" and not Path(command[0]).exists():
        pytest.skip("the package is not installed with its console script")
    result = subprocess.run(
        [*command, "encode", str(tmp_path / "a.xyz"), "-o", "c.npz", "--model", str(audio_model)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert (
        result.stderr.strip().startswith("vq-tokenizer encode: error:") and "Traceback" not in result.stderr
    )


# ------------------------------------------------------------------- eval: speech figures per bitrate and group


@pytest.fixture(scope="module")
def rvq_audio_model(tmp_path_factory) -> Path:
    """A 4-level residual audio tokenizer, its codebooks set by one training forward on real speech."""
    folder = tmp_path_factory.mktemp("rvq-audio-model")
    torch.manual_seed(0)
    config = VQVAEConfig(
        modality="audio", in_channels=1, hop_length=HOP, quantizer_type="rvq", num_quantizers=4, **TINY
    )
    VQVAEModel(config).save_pretrained(folder)
    VQVAEFeatureExtractor(feature_size=1, sampling_rate=16000, hop_length=HOP).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def speech_corpus_dir(tmp_path_factory) -> Path:
    """The offline corpus (save_to_disk): its test split has 2 held-out voices and ALSA's recordings."""
    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.skip("needs espeak-ng and flite")
    from vq_tokenizer.speech_corpus import build_speech_corpus

    folder = tmp_path_factory.mktemp("speech-corpus")
    build_speech_corpus(folder, num_train=1, num_test=2, seed=0, num_workers=1)
    return folder


GROUPS = ["all", "synthetic", "recorded", "noise"]


def test_eval_prints_speech_figures_per_bitrate_and_clip_group(
    tmp_path, rvq_audio_model, speech_corpus_dir, capsys
):
    from datasets import load_from_disk

    from vq_tokenizer.cli.eval import format_speech_table
    from vq_tokenizer.metrics import speech_metrics_per_item

    out, pictures = tmp_path / "figures.json", tmp_path / "pictures"
    # One clip per batch: a clip's reconstruction does not depend on the padding a longer neighbour brings.
    argv = ["eval", "--model", str(rvq_audio_model), "--dataset", str(speech_corpus_dir), "--batch_size", "1"]
    assert main([*argv, "--num_quantizers", "1", "4", "--json", str(out), "--pictures", str(pictures)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(out.read_text())
    table = metrics["speech_table"]
    assert [(row["levels"], row["group"]) for row in table] == [(n, g) for n in (1, 4) for g in GROUPS]
    rows = {(row["levels"], row["group"]): row for row in table}
    alsa = len(list(Path("/usr/share/sounds/alsa").glob("*.wav")))
    assert [rows[(1, g)]["items"] for g in GROUPS] == [2 + alsa, 2, alsa - 1, 1]
    assert metrics["num_eval_items"] == 2 + alsa
    # 1000 frames/s x n levels x log2(32) bits.
    assert rows[(1, "all")]["kbps"] == 5.0 and rows[(4, "all")]["kbps"] == 20.0
    # The flat figures are the full bitrate over every clip.
    for key in ("si_snr", "stoi", "pesq", "mel_l1", "pesq_items"):
        assert rows[(4, "all")][key] == metrics[key], key
    assert rows[(1, "all")]["mel_l1"] != rows[(4, "all")]["mel_l1"]
    for label in ("SI-SNR (dB):", "STOI:", "PESQ (wideband):", "log-mel L1:"):
        assert label in printed
    for line in format_speech_table(table):  # the header and one line per bitrate x group
        assert line in printed
    assert len(format_speech_table(table)) == 1 + 8

    # The 1-level figures are those of model.decode(codes[:, :1]): recomputed for the noise clip alone.
    model, extractor = _load(rvq_audio_model, VQVAEFeatureExtractor)
    test = load_from_disk(str(speech_corpus_dir))["test"].with_format("numpy")
    noise = test[list(test["source"]).index("alsa:Noise.wav")]["audio"]
    inputs = extractor(noise, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        codes = model.encode(inputs.input_values).codes
        reconstruction = model.decode(codes[:, :1]).reconstruction
    alone = speech_metrics_per_item(reconstruction, inputs.input_values, inputs.padding_mask)
    for key, value in alone.items():
        assert rows[(1, "noise")][key] == pytest.approx(value.item(), rel=1e-4, abs=1e-4), key

    # Decoded examples at each bitrate (one synthetic, one recorded, the noise) and the spectrograms per bitrate.
    index = json.loads((pictures / "examples" / "examples.json").read_text())
    assert [clip["group"] for clip in index["clips"]] == ["synthetic", "recorded", "noise"]
    for clip in index["clips"]:
        assert [d["levels"] for d in clip["decoded"]] == [1, 4]
        lengths = set()
        for path in [clip["original"], *(d["path"] for d in clip["decoded"])]:
            waveform, rate = sf.read(pictures / path)
            assert rate == 16000 and abs(len(waveform) / 16000 - clip["seconds"]) <= 1e-3
            lengths.add(len(waveform))
        assert len(lengths) == 1  # every bitrate of a clip is as long as the original
    assert index["picture"] == "spectrogram_levels.png" and (pictures / "spectrogram_levels.png").is_file()

    # Default levels of a 4-level quantizer: 1, 2 and 4; a dataset without speaker/source columns is "all".
    assert main([*argv, "--json", str(out)]) == 0
    assert [(row["levels"], row["group"]) for row in json.loads(out.read_text())["speech_table"]] == [
        (n, g) for n in (1, 2, 4) for g in GROUPS
    ]
    capsys.readouterr()


def test_eval_of_a_folder_of_files_is_one_group(tmp_path, audio_model, speech, capsys):
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    shutil.copy(speech, sounds / "hello.wav")
    out = tmp_path / "figures.json"
    assert main(["eval", "--model", str(audio_model), "--dataset", str(sounds), "--json", str(out)]) == 0
    capsys.readouterr()
    table = json.loads(out.read_text())["speech_table"]
    assert [(row["levels"], row["group"], row["items"]) for row in table] == [(1, "all", 1)]


def test_eval_num_quantizers_errors(tmp_path, image_model, audio_model, rvq_audio_model, photo, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(photo, images / "camera.png")
    cases = [
        (rvq_audio_model, tmp_path, ["5"], "num_quantizers must be level counts in [1, 4]"),
        (audio_model, tmp_path, ["2"], "num_quantizers must be level counts in [1, 1]"),
        (image_model, images, ["1"], "--num_quantizers is for audio tokenizers"),
    ]
    for model, dataset, counts, message in cases:
        argv = ["eval", "--model", str(model), "--dataset", str(dataset), "--num_quantizers", *counts]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_eval_on_two_processes_gives_the_same_table(tmp_path, rvq_audio_model, speech_corpus_dir):
    """`accelerate launch -m vq_tokenizer eval` on 2 CPU processes: the gathered table is the one process's."""
    import os
    import socket

    figures = {}
    for processes in (1, 2):
        out = tmp_path / f"figures-{processes}.json"
        launch = [sys.executable]
        if processes == 2:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            launch += [
                "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
            ]  # fmt: skip
        command = [
            *launch, "-m", "vq_tokenizer", "eval", "--model", str(rvq_audio_model),
            "--dataset", str(speech_corpus_dir), "--batch_size", "1", "--num_quantizers", "2", "4",
            "--json", str(out),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        figures[processes] = json.loads(out.read_text())
    one, two = figures[1], figures[2]
    assert two["num_eval_items"] == one["num_eval_items"]  # the repeated item of the uneven split is dropped
    assert [(r["levels"], r["group"], r["items"]) for r in two["speech_table"]] == [
        (r["levels"], r["group"], r["items"]) for r in one["speech_table"]
    ]
    for row_one, row_two in zip(one["speech_table"], two["speech_table"], strict=True):
        for key in ("si_snr", "stoi", "pesq", "mel_l1"):
            assert row_two[key] == pytest.approx(row_one[key], rel=1e-5, abs=1e-6), (row_one, key)
