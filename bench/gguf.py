"""GGUF on smollm2: every type and mix lowbit writes, against llama.cpp's own quantizer and runtime.

    python bench/gguf.py [--quick] [--json FILE] [--markdown FILE]

1. lowbit exports smollm2 as an F32 GGUF: the common input of both quantizers.
2. Bit-exactness per type: lowbit's bytes vs libggml's ``ggml_quantize_chunk`` on real smollm2 rows
   (live when llama-cpp-python is installed, `make reference`; else the committed golden fixtures).
3. For each mix: lowbit's ``export_gguf`` and llama.cpp's ``llama_model_quantize`` on the same F32
   weights, timed in this run (ratio), tensor data compared byte for byte.
4. Each lowbit file is scored on pydoc:eval (PPL, KL, top-1 vs the float model) through torch (the
   file's own bytes, dequantized) and, when installed, through llama.cpp (same windows, same protocol).
5. Q4_K_M, Q3_K_M and Q2_K again with an importance matrix computed from pydoc:calib.
"""

import sys
from pathlib import Path

if __name__ == "gguf":
    # A script run from bench/ has bench/ first on sys.path, so its `import gguf` (lowbit imports gguf-py)
    # lands here. Step aside: import the real package and hand it to the importer.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    del sys.modules["gguf"]
    import gguf as _real

    sys.modules["gguf"] = _real
elif __name__ == "__main__":
    from gguf_impl import main

    sys.exit(main())
