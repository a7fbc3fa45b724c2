"""One libFuzzer process: `python -m healthnode.tools.fuzz.worker TARGET [libFuzzer options...]`.

The runner (runner.py) starts one per target and reads what libFuzzer prints. healthnode and the
pure-Python parsers under it (json's, tomllib, multiaddr) are imported under atheris'
instrumentation, so their branches guide the mutations; msgspec and msgpack are C extensions
built without coverage, which atheris runs but cannot see into (their refusals still show in
the Python code that explains them, schema._explain).
"""

from __future__ import annotations

import sys
from typing import Final

# Modules whose coverage guides the fuzzer; the rest (trio, pydantic's Python layer) would add
# only noise, such as the scheduler's branches that differ from run to run.
INSTRUMENTED: Final = ["healthnode", "json", "tomllib", "multiaddr", "base58", "fhir"]


def main() -> None:
    import atheris  # noqa: PLC0415 (a test dependency: only this process needs it)

    name, options = sys.argv[1], sys.argv[2:]
    with atheris.instrument_imports(include=INSTRUMENTED):
        from healthnode.tools.fuzz.targets import TARGETS  # noqa: PLC0415 (instrumented)

        target = TARGETS[name]
        target.run(b"")  # imports what the first input would, under the instrumentation

    def one_input(data: bytes) -> None:
        target.run(data)

    atheris.Setup([sys.argv[0], *options], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
