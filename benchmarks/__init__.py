"""The benchmark suite: wb-magic and its peers doing the same work, measured side by side in one run.

``python -m benchmarks.run [--quick] [--out DIR]`` (or ``make bench``) writes ``benchmarks.md``,
``benchmarks.json`` and ``benchmarks.png`` to DIR. ``python -m benchmarks.profile`` profiles the hot call on
both sides. Every peer server runs in a subprocess on loopback and is stopped afterwards.
"""
