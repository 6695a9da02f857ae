"""`transformers.Trainer` trains `VQVAEModel` on Fashion-MNIST as a transformers user would set it up: the
dataset keeps its `label` column (the collator hands it to the model as `labels`, which a tokenizer ignores), and
`TrainingArguments(gradient_checkpointing=True)`. The EMA codebook still learns: k-means runs on the first batch,
the statistics move, and loss and codebook use behave as in our own loop."""

import math

import pytest
import torch
from tiny import tiny_config
from transformers import Trainer, TrainingArguments

from vq_tokenizer import VQVAEImageProcessor, VQVAEModel
from vq_tokenizer.data import load_fashion_mnist

STEPS = 32
LEARNING_RATE = 2e-3


@pytest.fixture(scope="module")
def fashion_mnist():
    try:
        splits = load_fashion_mnist()
    except RuntimeError as error:  # neither the Debian package nor the Hub is reachable
        pytest.skip(str(error))
    return splits["train"].shuffle(seed=0).select(range(STEPS * 32)), splits["test"].select(range(256))


def with_pixel_values(dataset, processor):
    """The usual transformers recipe: a transform that turns the image column into `pixel_values`."""

    def transform(batch):
        features = processor(batch["image"], return_tensors="pt")
        return {"pixel_values": list(features.pixel_values), "label": batch["label"]}

    return dataset.with_transform(transform)


def own_loop(dataset, processor) -> tuple[VQVAEModel, list[float]]:
    """The plain PyTorch loop: AdamW with a linear decay, like Trainer's defaults, no checkpointing."""
    torch.manual_seed(0)
    model = VQVAEModel(tiny_config()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / STEPS)
    pixel_values = processor(list(dataset["image"]), return_tensors="pt").pixel_values
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1))
    losses = []
    for batch in order.split(32)[:STEPS]:
        loss = model(pixel_values[batch]).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return model.eval(), losses


def usage_and_perplexity(model: VQVAEModel, pixel_values: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        output = model.eval()(pixel_values)
    return float(output.codebook_usage), float(output.perplexity)


def test_trainer_with_label_column_and_gradient_checkpointing(fashion_mnist, tmp_path):
    train, test = fashion_mnist
    assert "label" in train.column_names
    processor = VQVAEImageProcessor(num_channels=1, size_divisor=4)
    torch.manual_seed(0)
    model = VQVAEModel(tiny_config())
    initial_codebook = model.quantizer.codebook.detach().clone()

    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=STEPS,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=LEARNING_RATE,
        logging_steps=1,
        gradient_checkpointing=True,
        remove_unused_columns=False,  # the transform needs the `image` column
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        seed=0,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=with_pixel_values(train, processor),
        eval_dataset=with_pixel_values(test, processor),
    )
    assert (
        trainer.model_accepts_loss_kwargs is False
    )  # our loss is a mean: Trainer scales it for accumulation
    result = trainer.train()
    assert result.global_step == STEPS
    assert model.is_activation_checkpointing

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses)
    final = sum(losses[-4:]) / 4
    assert final < 0.85 * sum(losses[:4]) / 4, losses
    # As far as our own loop gets in as many steps (same data, optimiser and learning rate).
    own_model, own_losses = own_loop(train, processor)
    own_final = sum(own_losses[-4:]) / 4
    assert abs(final - own_final) < 0.15 * own_final, (final, own_final)

    # The EMA codebook learned: k-means on the first batch, then moving averages.
    quantizer = model.quantizer
    assert int(quantizer.initialized) == 1
    assert not torch.allclose(quantizer.codebook.detach(), initial_codebook)
    assert float(quantizer.cluster_size.sum()) > 0

    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] < losses[0]
    held_out = processor(test[:256]["image"], return_tensors="pt").pixel_values
    usage, perplexity = usage_and_perplexity(model, held_out)
    own_usage, own_perplexity = usage_and_perplexity(own_model, held_out)
    assert usage > 0.25 and perplexity > 2, (usage, perplexity)  # several codes in use, not a collapse to one
    assert usage > 0.7 * own_usage and perplexity > 0.7 * own_perplexity, (
        usage,
        perplexity,
        own_usage,
        own_perplexity,
    )


def test_trainer_gradient_accumulation_matches_a_bigger_batch(fashion_mnist, tmp_path):
    """With `accepts_loss_kwargs = False` Trainer divides our (mean) loss by the accumulation steps itself: two
    half batches give the update of one full batch. (Codebook trained by its loss, no k-means, no restarts: the
    forward is then a pure function of the parameters, which EMA updates between micro-batches are not.)"""
    train, _ = fashion_mnist
    processor = VQVAEImageProcessor(num_channels=1, size_divisor=4)
    dataset = with_pixel_values(train.select(range(32)), processor)

    def one_step(batch_size, accumulation):
        torch.manual_seed(0)
        model = VQVAEModel(tiny_config(codebook_update="loss", kmeans_init=False, dead_code_threshold=0.0))
        args = TrainingArguments(
            output_dir=str(tmp_path / f"run{accumulation}"),
            max_steps=1,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            learning_rate=1e-3,
            lr_scheduler_type="constant",
            optim="sgd",
            remove_unused_columns=False,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=0,
        )
        before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        Trainer(model=model, args=args, train_dataset=dataset).train()
        return {name: p.detach() - before[name] for name, p in model.named_parameters() if p.requires_grad}

    full, accumulated = one_step(32, 1), one_step(16, 2)
    for name, update in full.items():
        torch.testing.assert_close(accumulated[name], update, rtol=1e-3, atol=1e-7, msg=name)
