"""Coverage-guided fuzzing of every decoder of outside bytes, with atheris (libFuzzer for Python).

- `targets.py`: one target per family of decoders (the codec, the message kinds, frames, the
  admin socket, the files a node or a wallet reads), each a function of one input that lets
  every exception but the decoders' typed errors escape and checks a property of what decodes.
- `seeds.py` and `corpus/<target>/`: the seed corpus kept in the repository.
- `runner.py`, `worker.py`, `__main__.py`: `scripts/fuzz`, which runs the targets under atheris
  for a budget of time or inputs and reports inputs, exec/s, crashes, hangs and peak RSS.

The targets live in the package, beside the bench, the simulator, the nemesis and the soak, and
not in tests/: the suite runs them over their seeds (tests/test_fuzz.py), but the fuzzer runs them
on its own, as `python -m healthnode.tools.fuzz.worker`, which imports the package and not the
tests; here mypy checks them as strictly as the code they drive, and only the worker imports
atheris (a test dependency, as matplotlib is the soak's). docs/reliability.md, "Fuzzing", says
how to run it and what it found.
"""
