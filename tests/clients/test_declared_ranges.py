"""The Python client declares exactly the runtimes its generated code accepts, and tests both ends.

Generated code needs a runtime at least as new as its generator, so the floors in
clients/python/pyproject.toml must equal the generator's versions, which the generated
files record, and the oldest-runtime pins of tests/clients must equal those floors.
"""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from tests.clients.conftest import ROOT

CLIENT = ROOT / "clients/python"
REQS = CLIENT / "requirements"


def pins(name: str) -> dict[str, Version]:
    return {
        req.name: Version(next(iter(req.specifier)).version)
        for line in (REQS / name).read_text().splitlines()
        if line.strip() and not line.startswith("#")
        for req in [Requirement(line)]
    }


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["status"]
    return {req.name: req for req in map(Requirement, lines)}


def floor(req: Requirement) -> Version:
    (lower,) = [Version(s.version) for s in req.specifier if s.operator == ">="]
    return lower


def test_floors_are_the_generator_versions() -> None:
    deps = declared()
    generator = pins("gen-protoc.txt")
    grpc_versions = {
        m.group(1)
        for path in (CLIENT / "billing/v1").glob("*_pb2_grpc.py")
        for m in [re.search(r"^GRPC_GENERATED_VERSION = '([^']+)'$", path.read_text(), re.M)]
        if m
    }
    protobuf_versions = {
        m.group(1)
        for path in (CLIENT / "billing/v1").glob("*_pb2.py")
        for m in [re.search(r"^# Protobuf Python Version: (\S+)$", path.read_text(), re.M)]
        if m
    }
    assert grpc_versions == {str(generator["grpcio-tools"])}
    assert protobuf_versions == {str(generator["protobuf"])}
    assert floor(deps["grpcio"]) == generator["grpcio-tools"]
    assert floor(deps["grpcio-status"]) == generator["grpcio-tools"]
    assert floor(deps["protobuf"]) == generator["protobuf"]


def test_oldest_pins_are_the_floors_and_newest_pins_are_inside() -> None:
    deps = declared()
    oldest, newest = pins("runtime-oldest.txt"), pins("runtime-newest.txt")
    assert set(oldest) == set(newest) == set(deps)
    for name, req in deps.items():
        assert oldest[name] == floor(req), name
        assert req.specifier.contains(newest[name]), (name, newest[name])
    # protobuf's cap is the first major the generator's gencode is not known to load on.
    assert not deps["protobuf"].specifier.contains(Version(f"{newest['protobuf'].major + 1}.0.0"))


def test_service_repeats_the_client_protobuf_cap() -> None:
    service = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (protobuf,) = [Requirement(d) for d in service if Requirement(d).name == "protobuf"]
    client_cap = {s for s in declared()["protobuf"].specifier if s.operator == "<"}
    assert client_cap <= set(protobuf.specifier)
