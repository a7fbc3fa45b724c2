"""The fuzz targets (healthnode/tools/fuzz/) in the default suite: every target over its seed corpus
and a fixed sequence of mutations of it, deterministic and quick; the rules that keep the
targets complete (every decoder of outside bytes has one, every message kind has seeds, the
corpus is what seeds.py makes); one short atheris run, when atheris is installed; and what
fuzzing found, kept as regressions. The long campaigns run outside the suite (scripts/fuzz;
docs/reliability.md, "Fuzzing").
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from healthnode import limits
from healthnode.codec import CodecError
from healthnode.errors import ConfigError, GenesisError, HomeError, KeyFileError, StoreError
from healthnode.home import keys, node_key
from healthnode.home.backup import RestoreMark, backup_manifest_from_bytes
from healthnode.home.config import config_from_bytes
from healthnode.protocol import schema
from healthnode.protocol.genesis import genesis_from_bytes
from healthnode.tools.fuzz import seeds
from healthnode.tools.fuzz.mutate import mutations
from healthnode.tools.fuzz.targets import TARGETS, Target, every_kind
from healthnode.wallet import fhir, trust

ROOT = Path(__file__).resolve().parents[1] / "healthnode"
MUTATIONS = 1_500  # per target: about 4 s for all of them together
MUTATION_SEED = 20261207


def _corpus(name: str) -> list[bytes]:
    return [path.read_bytes() for path in seeds.corpus_files(name)]


@pytest.mark.parametrize("target", TARGETS.values(), ids=list(TARGETS))
def test_every_target_holds_on_its_seeds_and_on_seeded_mutations(target: Target) -> None:
    """No input makes a decoder raise anything but its typed errors, nor break a property;
    and the seeds hold inputs that decode (a corpus of refusals would explore nothing)."""
    corpus = _corpus(target.name)
    accepted = sum(target.run(data) for data in corpus)
    assert accepted >= 2, f"{target.name}: only {accepted} seeds decode"
    started = time.monotonic()
    for index, data in enumerate(mutations(corpus, MUTATIONS, MUTATION_SEED, target.max_len)):
        try:
            target.run(data)
        except Exception as error:
            raise AssertionError(
                f"{target.name}: mutation {index} of seed {MUTATION_SEED} ({len(data)} bytes, "
                f"{data[:80]!r}...) raised {type(error).__name__}: {error}") from error
    assert time.monotonic() - started < 10, "the mutations take too long for the suite"


# --- completeness -----------------------------------------------------------------------------

_DECODER_NAME = re.compile(r"^(decode|unpack|parse|require)|_from_bytes$|^from_json$|^feed$")

# Functions named like decoders that take no outside bytes, and why.
NOT_OUTSIDE_BYTES = {
    "healthnode.admin.rpc.parse_cli_params": "the operator's own command line",
    "healthnode.wallet.commands.parse_duration_ms": "a command-line option",
    "healthnode.wallet.cli.parse_until_ms": "a command-line option",
    "healthnode.wallet.trust.parse_genesis_argument":
        "a command-line argument; the file it names is read by load_genesis (target genesis)",
    "healthnode.ledger.rules.governance.require_authority":
        "a ledger rule on a transaction already decoded",
}


def _decoders_in_source() -> set[str]:
    """Every function or method of healthnode (the tools aside) named like a decoder, by its
    qualified name."""
    found = set()
    for path in sorted(ROOT.rglob("*.py")):
        if "tools" in path.relative_to(ROOT).parts:
            continue
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scopes: list[tuple[str, ast.AST]] = [("", tree)]
        while scopes:
            prefix, scope = scopes.pop()
            for node in ast.iter_child_nodes(scope):
                if isinstance(node, ast.ClassDef):
                    scopes.append((f"{prefix}{node.name}.", node))
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and \
                        _DECODER_NAME.search(node.name):
                    found.add(f"{module}.{prefix}{node.name}")
    return found


def _covered() -> set[str]:
    return {f"{decoder.__module__}.{decoder.__qualname__}"
            for target in TARGETS.values() for decoder in target.decoders}


def test_every_decoder_of_outside_bytes_has_a_target() -> None:
    """A new decoder (decode_*, parse_*, *_from_bytes, from_json, ...) needs a target that feeds
    it (healthnode/tools/fuzz/targets.py), or a reason here why it takes no outside bytes."""
    in_source = _decoders_in_source()
    assert "healthnode.protocol.tx.decode_tx" in in_source
    assert "healthnode.net.framing.FrameDecoder.feed" in in_source
    assert sorted(in_source - _covered() - set(NOT_OUTSIDE_BYTES)) == []
    assert sorted(set(NOT_OUTSIDE_BYTES) - in_source) == [], "an exemption names nothing"


def _message_kinds_in_source() -> set[str]:
    """The classes of healthnode that register a message kind (`class X(..., tag=N)`)."""
    kinds = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(k.arg == "tag" for k in node.keywords):
                kinds.add(node.name)
    return kinds


def test_every_message_kind_is_a_target_s_and_has_seeds() -> None:
    """A new message kind is decoded by the `message` target (targets.MESSAGE_MODULES imports
    its module) and has a seed that decodes to it: run
    `python -m healthnode.tools.fuzz --write-seeds`, which builds one from its type hints."""
    in_source = _message_kinds_in_source()
    assert len(in_source) > 60
    assert {cls.__name__ for cls in every_kind()} == in_source
    seeded = set()
    for data in _corpus("message"):
        with contextlib.suppress(CodecError):
            seeded.add(type(schema.decode_message(data, every_kind(),
                                                  limits.BLOCK_BYTES_MAX)).__name__)
    assert sorted(in_source - seeded) == []


def test_the_seed_corpus_is_what_seeds_py_makes() -> None:
    """The corpus in the repository is the generator's, file for file (after a new kind or a
    new seed: python -m healthnode.tools.fuzz --write-seeds)."""
    for name in TARGETS:
        kept = {path.name: path.read_bytes() for path in seeds.corpus_files(name)}
        assert kept == seeds.SEEDS[name](), f"corpus/{name} is stale"
    assert sum(len(data) for name in TARGETS for data in _corpus(name)) < 200_000


# --- atheris ----------------------------------------------------------------------------------


def test_atheris_runs_a_target_and_reports_its_figures(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    from healthnode.tools.fuzz.runner import Options, fuzz_target, table

    outcome = fuzz_target("codec", Options(seconds=None, runs=3_000, out=tmp_path),
                          lambda _line: None)
    assert outcome.inputs >= 3_000 and outcome.findings == 0 and outcome.processes == 1
    assert 20 < outcome.peak_rss_mb < 1024 and outcome.exec_per_s > 0
    assert f"| codec | {outcome.inputs:,} |" in table([outcome])
    assert any((tmp_path / "corpus" / "codec").iterdir()), "no input found new coverage"


# --- what fuzzing found -------------------------------------------------------------------------
# Each input that made a target fail, kept: the decoder must refuse it with its typed error, and
# the target must hold on it. (docs/reliability.md, "Fuzzing", tells which run found which.)


def _pin_with_a_key_of_31_bytes() -> bytes:
    """The pin file that the campaign of 2026-12-07 found (target pin, atheris): a trusted key of
    64 characters, two of them spaces, which bytes.fromhex reads as 31 bytes."""
    document = json.loads(seeds.pin_seeds()["pin-moved-up-with-pending"])
    key = document["trusted"]["next_authorities"][1]
    document["trusted"]["next_authorities"][1] = key[:20] + "  " + key[22:]
    return json.dumps(document).encode()


FOUND = [
    pytest.param(lambda: node_key.key_from_env_file("HEALTHNODE_NODE_KEY=\u03daw\n", "node.env"),
                 KeyFileError, "keys", b"HEALTHNODE_NODE_KEY=\xcf\x9awA='",
                 id="env-file-key-not-ascii"),
    pytest.param(lambda: config_from_bytes(b"ea  =" + b"[" * 1000, "config.toml"),
                 ConfigError, "config", b"ea  =" + b"[" * 1000, id="config-arrays-too-deep"),
    pytest.param(lambda: config_from_bytes(b"[p2p]\npeers_max = " + b"9" * 4301, "config.toml"),
                 ConfigError, "config", b"a = " + b"9" * 4301, id="config-number-too-long"),
    *[pytest.param(lambda data=data: config_from_bytes(data, "config.toml"), ConfigError,
                   "config", data, id=f"config-metrics-port-{what}")
      for what, port in (("too-long", "9" * 4306), ("superscript-digit", "\u00b2"))
      for data in [f'[metrics]\nlisten = "localhost:{port}"\n'.encode()]],
    *[pytest.param(decode, error, target, data, id=f"{name}-{what}")
      for what, data in (("number-too-long", b"9" * 4301), ("nested-too-deep", b"[" * 1100))
      for name, decode, error, target in (
          ("genesis", lambda data=data: genesis_from_bytes(data, "genesis.json"), GenesisError,
           "genesis"),
          ("key-file", lambda data=data: keys.parse_key_document(data, "node_key.json"),
           KeyFileError, "keys"),
          ("share-file", lambda data=data: keys.emergency_share_from_bytes(data, "share.json"),
           KeyFileError, "keys"),
          ("backup-manifest",
           lambda data=data: backup_manifest_from_bytes(data, Path("backup.json")), HomeError,
           "backup"),
          ("restore-mark", lambda data=data: RestoreMark.decode(data), StoreError, "store"),
          ("fhir", lambda data=data: fhir.fhir_resource_type(data), None, "fhir"))],
    *[pytest.param(lambda data=data: fhir.validate_fhir(data), fhir.FhirError, "fhir", data,
                   id=f"fhir-contained-resource-type-{what}")
      for what, inner in (("unknown", "Pa999tient"), ("not-text", 5))
      for data in [json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
          {"fullUrl": "urn:uuid:1", "resource": {"resourceType": inner, "id": "p1"},
           "request": {"method": "POST", "url": "Patient"}}]}).encode()]],
    pytest.param(lambda: trust.pin_from_bytes(_pin_with_a_key_of_31_bytes(), Path("a.pin.json")),
                 trust.PinError, "pin", _pin_with_a_key_of_31_bytes(), id="pin-key-with-spaces"),
]


@pytest.mark.parametrize(("decode", "error", "target", "data"), FOUND)
def test_what_fuzzing_found_is_refused_with_a_typed_error(
        decode: Callable[[], object], error: type[Exception] | None, target: str,
        data: bytes) -> None:
    """`error` None: the function refuses by its answer (fhir_resource_type: not FHIR)."""
    if error is None:
        decode()
    else:
        with pytest.raises(error):
            decode()
    TARGETS[target].run(data)
