"""Makes compress/data/speech_16k.wav: 8 s of synthetic speech with pauses, 16 kHz mono 16-bit.

A source-filter (formant) synthesiser, numpy only, fixed seed, so the file can be re-made byte for
byte: a glottal pulse train (Rosenberg pulse, differentiated for lip radiation) with a falling pitch
contour, accents, jitter and breath noise, through four cascaded formant resonators whose targets
glide from phoneme to phoneme; fricatives and bursts are band-passed noise, nasals a low murmur.
Three phrases of made-up consonant-vowel syllables, separated by pauses that hold only a faint
room noise. Silero VAD calls the phrases speech and the pauses non-speech (tests/test_silero_vad.py
checks that both sides are well represented).

    .venv/bin/python compress/data/make_speech.py      # rewrites compress/data/speech_16k.wav
"""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

SR = 16000
OUT = Path(__file__).with_name("speech_16k.wav")

# Formant targets F1, F2, F3 in Hz (adult values after Peterson & Barney 1952); F4 is fixed.
VOWELS = {"a": (730, 1090, 2440), "i": (270, 2290, 3010), "u": (300, 870, 2240), "e": (530, 1840, 2480),
          "o": (570, 840, 2410), "ae": (660, 1720, 2410), "er": (490, 1350, 1690)}
F4, BANDWIDTHS = 3500.0, (70.0, 100.0, 140.0, 250.0)
# Consonants: kind, formant locus (where the vowel's formants glide from / to), noise band (Hz).
CONSONANTS = {
    "m": ("nasal", (280, 1000, 2200), None), "n": ("nasal", (280, 1500, 2500), None),
    "l": ("liquid", (360, 1100, 2700), None), "r": ("liquid", (420, 1200, 1600), None),
    "w": ("liquid", (300, 700, 2200), None),
    "s": ("fricative", (350, 1700, 2600), (5500, 2000)), "sh": ("fricative", (350, 1900, 2500), (3000, 1200)),
    "f": ("fricative", (350, 1100, 2400), (4500, 4000)),
    "p": ("plosive", (300, 800, 2200), (1200, 1500)), "t": ("plosive", (300, 1700, 2600), (4000, 2500)),
    "k": ("plosive", (300, 2000, 2300), (2200, 1200)), "b": ("plosive", (250, 800, 2200), (1000, 1200)),
    "d": ("plosive", (250, 1700, 2600), (3500, 2500)), "g": ("plosive", (250, 2000, 2300), (2000, 1200)),
}
VOICED_PLOSIVES = {"b", "d", "g"}
# (start s, syllables, base pitch Hz): three phrases; silence with room noise elsewhere.
PHRASES = [(0.55, 7, 125.0), (3.25, 6, 190.0), (5.75, 5, 115.0)]
DURATION = 8.0


def resonate(x: np.ndarray, freq: np.ndarray, bw: float) -> np.ndarray:
    """Second-order resonator (Klatt 1980) with unit gain at 0 Hz; freq may change per sample."""
    c = -np.exp(-2 * np.pi * bw / SR)
    b = 2 * np.exp(-np.pi * bw / SR) * np.cos(2 * np.pi * freq / SR)
    a = 1 - b - c
    y = np.zeros_like(x)
    y1 = y2 = 0.0
    for n in range(len(x)):
        y0 = a[n] * x[n] + b[n] * y1 + c * y2
        y[n], y2, y1 = y0, y1, y0
    return y


def bandpass_noise(n: int, center: float, width: float, rng) -> np.ndarray:
    """White noise through one resonator, scaled to unit RMS."""
    y = resonate(rng.standard_normal(n), np.full(n, center), width)
    return y / (np.sqrt(np.mean(y * y)) + 1e-12)


def smooth(track: np.ndarray, ms: float) -> np.ndarray:
    k = max(1, int(SR * ms / 1000))
    return np.convolve(np.pad(track, (k // 2, k - 1 - k // 2), mode="edge"), np.ones(k) / k, mode="valid")


def phrase(n_syll: int, f0: float, rng) -> np.ndarray:
    """One phrase of random CV / CVC syllables: the waveform, peak about 1."""
    segments = []  # (samples, kind, formants, noise band, voiced)
    for s in range(n_syll):
        c = rng.choice(list(CONSONANTS))
        v = rng.choice(list(VOWELS))
        kind, locus, band = CONSONANTS[c]
        if kind == "plosive":
            segments.append((int(SR * rng.uniform(0.04, 0.07)), "closure", locus, None, c in VOICED_PLOSIVES))
            segments.append((int(SR * 0.015), "burst", locus, band, False))
        else:
            dur = rng.uniform(0.07, 0.11) if kind == "fricative" else rng.uniform(0.05, 0.08)
            segments.append((int(SR * dur), kind, locus, band, kind != "fricative"))
        segments.append((int(SR * rng.uniform(0.11, 0.2)), "vowel", VOWELS[v], None, True))
        if rng.random() < 0.3:  # a closing nasal or liquid now and then
            coda = rng.choice(["m", "n", "l"])
            segments.append((int(SR * rng.uniform(0.05, 0.08)), CONSONANTS[coda][0], CONSONANTS[coda][1], None, True))
    n = sum(s[0] for s in segments)
    formants = np.zeros((3, n))
    voice, frication, bands = np.zeros(n), np.zeros(n), []
    pos = 0
    for length, kind, fmts, band, voiced in segments:
        sl = slice(pos, pos + length)
        formants[:, sl] = np.array(fmts, dtype=float)[:, None]
        voice[sl] = {"vowel": 1.0, "nasal": 0.35, "liquid": 0.6, "closure": 0.12, "burst": 0.0}.get(kind, 0.0) \
            if voiced else 0.0
        if band is not None:
            frication[sl] = 0.5 if kind == "fricative" else 0.9
            bands.append((sl, band))
        pos += length
    formants = np.stack([smooth(f, 45) for f in formants])
    voice, frication = smooth(voice, 15), smooth(frication, 8)

    # Pitch: declination over the phrase, an accent bump on a few syllables, slow wobble, jitter.
    t = np.arange(n) / SR
    pitch = f0 * (1.1 - 0.25 * t / t[-1])
    for centre in rng.uniform(0, t[-1], size=3):
        pitch *= 1 + 0.12 * np.exp(-0.5 * ((t - centre) / 0.08) ** 2)
    pitch *= 1 + 0.02 * np.sin(2 * np.pi * 4.5 * t) + 0.01 * smooth(rng.standard_normal(n), 10)
    phase = np.cumsum(pitch / SR) % 1.0
    # Rosenberg glottal pulse: opening 40 % of the period, closing 16 %, closed the rest.
    pulse = np.where(phase < 0.4, 0.5 * (1 - np.cos(np.pi * phase / 0.4)),
                     np.where(phase < 0.56, np.cos(0.5 * np.pi * (phase - 0.4) / 0.16), 0.0))
    source = np.diff(pulse, prepend=0.0) * voice + 0.015 * rng.standard_normal(n) * voice

    y = source
    for k in range(3):
        y = resonate(y, formants[k], BANDWIDTHS[k])
    y = resonate(y, np.full(n, F4), BANDWIDTHS[3])
    y = y / np.abs(y).max()
    noise = np.zeros(n)
    for sl, (centre, width) in bands:
        noise[sl] = bandpass_noise(sl.stop - sl.start, centre, width, rng)
    y = y + 0.12 * noise * frication
    return y / np.abs(y).max()


def make(seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(SR * DURATION)
    # Room noise: faint brown-ish noise (-60 dBFS or so) all through, speech over it.
    audio = 0.001 * smooth(rng.standard_normal(n), 0.5) + 0.0005 * rng.standard_normal(n)
    for start, n_syll, f0 in PHRASES:
        p = 0.5 * phrase(n_syll, f0, rng)
        i = int(SR * start)
        audio[i:i + len(p)] += p[: n - i]
    return audio


def write_wav(path: Path, audio: np.ndarray) -> None:
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())


if __name__ == "__main__":
    a = make()
    write_wav(OUT, a)
    print(f"wrote {OUT} ({len(a) / SR:.1f} s)")
