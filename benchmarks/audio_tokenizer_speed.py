"""Parameter count and speed of the default SoundStream tokenizer on 2.125 s of 16 kHz audio.

    JAX_PLATFORMS=cpu python benchmarks/audio_tokenizer_speed.py [--batch 1] [--repeats 5]

Times tokenizing (encoder + RVQ codes), detokenizing (codes -> waveform), the
evaluation forward pass (encode, RVQ, decode) and one training gradient (L1 +
multi-scale spectral + commitment losses) after compilation, each call
synchronised with ``block_until_ready``; the first two also as seconds of audio
per second (the real-time factor).
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from videogen.evaluation.audio_metrics import multiscale_spectral_distance
from videogen.models.audio_tokenizer import SoundStreamTokenizer

from timing import best_seconds  # a sibling module (benchmarks/ is the script's directory)

NUM_SAMPLES = 34_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = nnx.jit(lambda: SoundStreamTokenizer(rngs=nnx.Rngs(0)))()
    params = nnx.state(model, nnx.Param)
    print(f"parameters: {sum(x.size for x in jax.tree.leaves(params)):,}")
    audio = jnp.asarray(
        0.1 * np.random.default_rng(0).standard_normal((args.batch, NUM_SAMPLES)), jnp.float32
    )

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def grad(params, rest, audio):
        def loss(params):
            module = nnx.merge(graphdef, params, rest, copy=True)
            reconstruction, aux = module(audio)
            spectral = jnp.mean(multiscale_spectral_distance(reconstruction, audio))
            l1 = jnp.mean(jnp.abs(reconstruction - audio))
            return l1 + spectral + aux["losses"]["commitment"]

        return jax.grad(loss)(params)

    train = best_seconds(lambda: grad(params, rest, audio), repeats=args.repeats)
    model.eval()
    eval_graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, a: nnx.merge(eval_graphdef, s)(a)[0])
    infer = best_seconds(lambda: forward(state, audio), repeats=args.repeats)
    tokenize = jax.jit(lambda s, a: nnx.merge(eval_graphdef, s).tokenize(a))
    tokens = tokenize(state, audio)
    detokenize = jax.jit(lambda s, t: nnx.merge(eval_graphdef, s).detokenize(t, NUM_SAMPLES))
    encode = best_seconds(lambda: tokenize(state, audio), repeats=args.repeats)
    decode = best_seconds(lambda: detokenize(state, tokens), repeats=args.repeats)
    seconds = args.batch * NUM_SAMPLES / 16_000
    print(
        f"batch {args.batch} x 2.125 s: tokenize {encode * 1e3:.0f} ms "
        f"({seconds / encode:.1f} s of audio/s), detokenize {decode * 1e3:.0f} ms "
        f"({seconds / decode:.1f} s of audio/s), forward {infer * 1e3:.0f} ms, "
        f"gradient {train * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
