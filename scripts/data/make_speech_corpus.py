"""Build an offline speech corpus in LibriSpeech's layout: espeak-ng reading sentences from the docstrings
of the Python standard library, resampled to 16 kHz flac.

    python scripts/data/make_speech_corpus.py     # into $DYT_DATA_DIR/speech_demo or ~/.cache/dyt/speech_demo

writes ``<out>/{train,dev}/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` with a
``<speaker>-<chapter>.trans.txt`` per chapter, as LibriSpeech does; a speaker is one espeak-ng voice
(accent and voice variant), a chapter one standard-library module. The speech is synthetic but real
speech signal (formants, prosody, silences), enough to watch wav2vec 2.0's loss fall on a CPU; it is
not LibriSpeech and its numbers are not comparable to the paper's. The same arguments give the same
sentences and voices; the audio is whatever the installed espeak-ng makes of them.

Needs Debian's espeak-ng (``sudo apt-get install -y espeak-ng``) and scipy (resampling).
"""

from __future__ import annotations

import argparse
import ast
import math
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dyt.data import data_root  # noqa: E402

SAMPLE_RATE = 16_000
# One espeak-ng voice per speaker: an English accent and a voice variant (espeak-ng --voices=variant).
VOICES = [
    "en-us+m1",
    "en-us+f2",
    "en-gb+m3",
    "en-gb-scotland+f3",
    "en-us+m4",
    "en-gb-x-rp+f4",
    "en-us+m7",
    "en-gb+f1",
]
INSTALL = "sudo apt-get install -y espeak-ng"


def stdlib_sentences(min_words: int, max_words: int) -> list[tuple[str, str]]:
    """(module, sentence) pairs from the docstrings of the standard library's ``.py`` files, in a fixed
    order: plain prose sentences of ``min_words``..``max_words`` words (no code, no markup)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        for node in nodes:
            doc = ast.get_docstring(node) or ""
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                words = sentence.split()
                if min_words <= len(words) <= max_words and re.fullmatch(r"[A-Z][A-Za-z ,.;'-]*[.!?]", sentence):
                    out.append((path.stem, sentence))
    return out


def synthesize(text: str, voice: str, speed: int) -> np.ndarray:
    """16 kHz float32 speech of ``text`` (espeak-ng writes 22,050 Hz 16-bit wav)."""
    import soundfile
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "utt.wav"
        cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), "--stdin"]
        subprocess.run(cmd, input=text.encode(), check=True)
        audio, rate = soundfile.read(wav, dtype="float32")
    g = math.gcd(SAMPLE_RATE, rate)
    return resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)


def write_split(out: Path, split: str, sentences: list[tuple[str, str]], first_speaker: int) -> int:
    """Write ``sentences`` as utterances of ``split``; speaker ``k`` reads every len(VOICES)-th sentence."""
    import soundfile

    transcripts: dict[Path, list[str]] = {}
    modules = {m: i for i, m in enumerate(dict.fromkeys(m for m, _ in sentences))}
    for n, (module, text) in enumerate(sentences):
        speaker_idx = (first_speaker + n) % len(VOICES)
        speaker, chapter = 100 + speaker_idx, 1000 + modules[module]
        speed = 150 + 10 * (n % 5)  # words per minute: a little tempo variation
        folder = out / split / str(speaker) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        utt = f"{speaker}-{chapter}-{n:04d}"
        soundfile.write(folder / f"{utt}.flac", synthesize(text, VOICES[speaker_idx], speed), SAMPLE_RATE)
        transcripts.setdefault(folder / f"{speaker}-{chapter}.trans.txt", []).append(f"{utt} {text.upper()}")
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n")
    return len(sentences)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = data_root() / "speech_demo"
    parser.add_argument(
        "--out",
        type=Path,
        default=default_out,
        help=f"corpus directory (train/ and dev/ go under it; default {default_out}: where data=speech_demo reads)",
    )
    parser.add_argument("--train", type=int, default=400, help="training utterances")
    parser.add_argument("--dev", type=int, default=60, help="validation utterances (other sentences)")
    parser.add_argument("--min-words", type=int, default=6)
    parser.add_argument("--max-words", type=int, default=24)
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        sys.exit(f"espeak-ng is not installed; it synthesises the demo speech. Install it with: {INSTALL}")
    sentences = stdlib_sentences(args.min_words, args.max_words)
    needed = args.train + args.dev
    if len(sentences) < needed:
        sys.exit(f"only {len(sentences)} usable sentences for {needed} utterances; lower --train / --dev")
    # Spread both splits over the whole library: every k-th sentence goes to dev.
    step = len(sentences) // needed
    picked = sentences[: step * needed : step]
    dev_idx = set(range(0, needed, needed // args.dev)[: args.dev])
    dev = [s for i, s in enumerate(picked) if i in dev_idx]
    train = [s for i, s in enumerate(picked) if i not in dev_idx][: args.train]
    if args.out.exists():
        sys.exit(f"{args.out} exists; remove it or choose another --out")
    write_split(args.out, "train", train, first_speaker=0)
    write_split(args.out, "dev", dev, first_speaker=3)
    print(f"wrote {len(train)} train and {len(dev)} dev utterances ({len(VOICES)} voices) under {args.out}")


if __name__ == "__main__":
    main()
