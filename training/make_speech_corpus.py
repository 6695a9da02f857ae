"""Build the offline speech corpus (espeak-ng + flite synthesis, ALSA recordings) as a `datasets.DatasetDict`.

    python training/make_speech_corpus.py --output_dir data/speech --num_train 400 --num_test 40 --seed 0

Read it back with `datasets.load_from_disk("data/speech")`; columns and splits are described in
`vq_tokenizer/speech_corpus.py`.
"""

import json
import time
from dataclasses import dataclass, field

from vq_tokenizer.speech_corpus import build_speech_corpus, summarize
from vq_tokenizer.training import RecipeArgumentParser


@dataclass
class CorpusArguments:
    output_dir: str = field(metadata={"help": "folder the DatasetDict is saved to"})
    num_train: int = field(default=400, metadata={"help": "synthetic train clips"})
    num_test: int = field(default=40, metadata={"help": "synthetic test clips (ALSA recordings come on top)"})
    seed: int = field(default=0, metadata={"help": "seeds sentences, voices, speeds and pitches"})
    max_seconds: float = field(default=10.0, metadata={"help": "longest clip kept"})
    num_workers: int = field(default=2, metadata={"help": "synthesis processes run at once"})


def parse_args(argv: list[str] | None = None) -> CorpusArguments:
    (args,), _ = RecipeArgumentParser(CorpusArguments, description=__doc__).parse_recipe_and_args(argv)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    corpus = build_speech_corpus(
        args.output_dir,
        num_train=args.num_train,
        num_test=args.num_test,
        seed=args.seed,
        max_seconds=args.max_seconds,
        num_workers=args.num_workers,
    )
    elapsed = time.perf_counter() - start
    print(f"Saved to {args.output_dir} in {elapsed:.1f} s")
    for split, stats in summarize(corpus).items():
        print(
            f"{split}: {stats['clips']} clips, {stats['hours'] * 60:.1f} min ({stats['hours']:.3f} h), "
            f"{stats['min_seconds']:.2f}-{stats['max_seconds']:.2f} s per clip"
        )
        print(f"  per engine: {json.dumps(stats['per_engine'])}")
        print(f"  per speaker: {json.dumps(stats['per_speaker'])}")


if __name__ == "__main__":
    main()
