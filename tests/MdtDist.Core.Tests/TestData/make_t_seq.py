# Produces trellis_t_seq.safetensors: TRELLIS's sampler time grids, computed with numpy exactly as
# trellis/pipelines/samplers/flow_euler.py (FlowEulerSampler.sample) does:
#   t_seq = np.linspace(1, 0, steps + 1); t_seq = rescale_t * t_seq / (1 + (rescale_t - 1) * t_seq)
# Run with Debian's python3-numpy: /usr/bin/python3 make_t_seq.py
import json, struct
import numpy as np
out = {}
for steps in (1, 2, 4, 12, 25):
    for s in (1.0, 3.0):
        t = np.linspace(1, 0, steps + 1)
        t = s * t / (1 + (s - 1) * t)
        out[f"steps{steps}_rescale{int(s)}"] = t.astype(np.float64)
header, blob, off = {}, b"", 0
for k in sorted(out):
    b = out[k].tobytes()
    header[k] = {"dtype": "F64", "shape": [len(out[k])], "data_offsets": [off, off + len(b)]}
    off += len(b); blob += b
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open("trellis_t_seq.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + blob)
