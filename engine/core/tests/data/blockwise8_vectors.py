"""Writes blockwise8-hivemind.json: inputs and Hivemind's BLOCKWISE_8BIT buffers for them.

Run once, by hand, in a Python environment with Hivemind and bitsandbytes (not part of
`npm test`: torch alone is several GB):

    python3 -m venv .venv-hivemind
    .venv-hivemind/bin/pip install hivemind==1.1.12 bitsandbytes==0.50.2 'numpy<2'
    .venv-hivemind/bin/python engine/core/tests/data/blockwise8_vectors.py > engine/core/tests/data/blockwise8-hivemind.json

Each case holds the input (f32 bits, hex) and the exact buffer Hivemind serializes for it
(`serialize_torch_tensor(x, CompressionType.BLOCKWISE_8BIT).buffer`, hex), plus what
Hivemind decodes from that buffer (f32 bits, hex). tests/codec.rs checks that our encoder
writes the same bytes and our decoder reads the same values.
"""
import json
import struct
import sys

import numpy as np
import torch
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.proto.runtime_pb2 import CompressionType


def hexf(a):
    return np.asarray(a, dtype='<f4').tobytes().hex()


def case(name, x):
    x = np.asarray(x, dtype=np.float32)
    t = torch.from_numpy(x.copy())
    msg = serialize_torch_tensor(t, CompressionType.BLOCKWISE_8BIT)
    back = deserialize_torch_tensor(msg).numpy()
    return {'name': name, 'n': int(x.size), 'input': hexf(x), 'buffer': bytes(msg.buffer).hex(), 'decoded': hexf(back)}


rng = np.random.default_rng(20261206)
cases = []
# Activations-like: normal values with a few large outliers; two blocks, the last partial.
x = rng.standard_normal(5000).astype(np.float32)
x[::97] *= 20
cases.append(case('normal-with-outliers-5000', x))
# Heavy-tailed and tiny values in one block (the code's small exponents).
y = (rng.standard_cauchy(3000) * 1e-3).astype(np.float32)
cases.append(case('cauchy-tiny-3000', y))
# An all-zero block followed by a partial block.
z = np.zeros(4100, dtype=np.float32)
z[4096:] = [0.5, -0.25, 1e-6, -3.0]
cases.append(case('zero-block-then-tail-4100', z))

# Ties: with absmax 1, a value exactly halfway between two code entries (where f32 holds
# the midpoint exactly) must take the lower index.
code = None
import bitsandbytes.functional as F  # noqa: E402

_, state = F.quantize_blockwise(torch.ones(8), blocksize=4096)
code = state.code.numpy().astype(np.float32)
mids = []
for i in range(255):
    m = (np.float64(code[i]) + np.float64(code[i + 1])) / 2
    if np.float64(np.float32(m)) == m:
        mids.append(np.float32(m))
ties = np.array([1.0] + mids, dtype=np.float32)
cases.append(case(f'ties-{len(mids)}-midpoints', ties))

json.dump({
    'about': 'Hivemind 1.1.12 + bitsandbytes 0.50.2 BLOCKWISE_8BIT buffers; made by blockwise8_vectors.py (see there).',
    'code': hexf(code),
    'cases': cases,
}, sys.stdout, indent=1)
sys.stdout.write('\n')
