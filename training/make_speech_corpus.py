"""Build the offline speech corpus (espeak-ng + flite synthesis, ALSA recordings) as a `datasets.DatasetDict`.

    python training/make_speech_corpus.py --output_dir data/speech --num_train 400 --num_test 40 --seed 0

Read it back with `datasets.load_from_disk("data/speech")`; columns and splits are described in
`vq_tokenizer/speech_corpus.py`.
"""

from __future__ import annotations

import argparse
import json
import time

from vq_tokenizer.speech_corpus import build_speech_corpus, summarize


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", required=True, help="folder the DatasetDict is saved to")
    parser.add_argument("--num_train", type=int, default=400, help="synthetic train clips")
    parser.add_argument(
        "--num_test", type=int, default=40, help="synthetic test clips (ALSA recordings come on top)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds sentences, voices, speeds and pitches")
    parser.add_argument("--max_seconds", type=float, default=10.0, help="longest clip kept")
    parser.add_argument("--num_workers", type=int, default=2, help="synthesis processes run at once")
    return parser.parse_args(argv)


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
