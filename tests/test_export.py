"""`torch.export` of `encode`, `decode` and the eval-mode `forward`: the exported programmes give the eager codes
and reconstructions, for other batch sizes too. Input checks that need the data (finite values, code range) run
in eager mode only and are skipped while exporting."""

import pytest
import torch
from tiny import tiny_config
from torch.export import Dim

from vq_tokenizer import VQVAEModel

AUDIO = dict(modality="audio", downsampling_factor=16, stft_fft_sizes=[64, 128])


class Encode(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        return self.model.encode(**{self.model.main_input_name: inputs}).codes


class Decode(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, codes):
        return self.model.decode(codes).reconstruction


def trained(modality: str) -> VQVAEModel:
    config = tiny_config(**(AUDIO if modality == "audio" else {}))
    torch.manual_seed(0)
    model = VQVAEModel(config).train()
    with torch.no_grad():
        for step in range(2):
            model(**{config.main_input_name: inputs(config, 8, seed=step)})
    return model.eval()


def inputs(config, batch: int, seed: int = 7) -> torch.Tensor:
    shape = (
        (batch, config.in_channels, 16, 16)
        if config.modality == "image"
        else (batch, config.in_channels, 256)
    )
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(params=["image", "audio"])
def model(request) -> VQVAEModel:
    return trained(request.param)


def test_exported_encode_and_decode_match_eager(model):
    config = model.config
    batch = Dim("batch", min=1, max=64)
    example = inputs(config, 3)
    with torch.no_grad():
        encode = torch.export.export(Encode(model), (example,), dynamic_shapes={"inputs": {0: batch}})
        for size in (3, 5, 1):
            x = inputs(config, size, seed=size)
            assert torch.equal(encode.module()(x), model.encode(x).codes)

        codes = model.encode(example).codes
        decode = torch.export.export(Decode(model), (codes,), dynamic_shapes={"codes": {0: batch}})
        for size in (3, 6):
            other = model.encode(inputs(config, size, seed=10 + size)).codes
            torch.testing.assert_close(decode.module()(other), model.decode(other).reconstruction)


def test_exported_encode_with_dynamic_sizes(model):
    config = model.config
    factor = config.downsampling_factor
    if config.modality == "image":
        height, width = Dim("h", min=2, max=64), Dim("w", min=2, max=64)  # grids of at least 2 x 2
        dynamic = {"inputs": {0: Dim("batch", max=64), 2: factor * height, 3: factor * width}}
        others = [
            torch.rand(2, config.in_channels, factor * h, factor * w) * 2 - 1 for h, w in ((2, 3), (5, 2))
        ]
    else:
        frames = Dim("frames", min=2, max=256)
        dynamic = {"inputs": {0: Dim("batch", max=64), 2: factor * frames}}
        others = [torch.rand(2, config.in_channels, factor * t) * 2 - 1 for t in (3, 40)]
    with torch.no_grad():
        program = torch.export.export(Encode(model), (inputs(config, 3),), dynamic_shapes=dynamic)
        for other in others:
            assert torch.equal(program.module()(other), model.encode(other).codes)


def test_exported_forward_in_eval_matches_eager(model):
    config = model.config
    example = {config.main_input_name: inputs(config, 3)}
    with torch.no_grad():
        program = torch.export.export(model, args=(), kwargs=example)
        exported = program.module()(**example)
        eager = model(**example)
    for name in ("loss", "reconstruction", "codes", "perplexity", "codebook_usage"):
        torch.testing.assert_close(exported[name], eager[name], msg=name)


def test_data_checks_stay_eager_and_are_skipped_while_exporting(model):
    config = model.config
    broken = inputs(config, 2)
    broken[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.encode(broken)
    with pytest.raises(ValueError, match=r"\[0, 31\]"):
        model.decode(torch.full((1, 2, 2) if config.modality == "image" else (1, 4), 99))
    with torch.no_grad():
        program = torch.export.export(Encode(model), (inputs(config, 2),))
        codes = program.module()(broken)  # no data check in the graph: it runs, on whatever it is given
    assert codes.shape == model.encode(inputs(config, 2)).codes.shape
    # Shape checks are not about the data: eager and exported programmes both refuse a wrong layout.
    with pytest.raises(ValueError, match="channels"):
        model.encode(torch.zeros(2, config.in_channels + 1, *inputs(config, 2).shape[2:]))


def test_transformers_dynamo_exporter(model):
    """transformers' own exporter (`transformers.exporters`) takes the model as it is."""
    from transformers.exporters import DynamoConfig, DynamoExporter

    config = model.config
    example = {config.main_input_name: inputs(config, 2)}
    exported = DynamoExporter().export(model, example, config=DynamoConfig())
    with torch.no_grad():
        eager = model(**example)
    outputs = exported(**example)
    codes = outputs["codes"] if isinstance(outputs, dict) else outputs.codes
    assert torch.equal(codes, eager.codes)
