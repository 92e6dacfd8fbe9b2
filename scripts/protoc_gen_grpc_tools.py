"""A protoc plugin that runs the code generators built into grpcio-tools' protoc.

buf drives every code generator of this repository (buf.gen.yaml), but the
Python generators we pin (grpcio-tools' bundled protoc and its grpc_python
generator) are not standalone protoc-gen-* plugins: they live inside
`grpc_tools.protoc`. This shim speaks the plugin protocol to buf and hands the
files it received, as a descriptor set, to that bundled protoc.

Usage (buf.gen.yaml): local: [PYTHON, scripts/protoc_gen_grpc_tools.py]
with opt naming the built-in generators to run, e.g. `python,grpc_python`
(default). PYTHON must have the pinned grpcio-tools installed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc

_DEFAULT_GENERATORS = ("python", "grpc_python")


def _default_json_name(name: str) -> str:
    """protoc's JSON name for a field: snake_case to lowerCamelCase."""
    out, upper = [], False
    for ch in name:
        if ch == "_":
            upper = True
        elif upper:
            out.append(ch.upper())
            upper = False
        else:
            out.append(ch)
    return "".join(out)


def _strip_default_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    """Drop json_name where it is the default, as protoc's own parser leaves it.

    buf records every field's JSON name in the descriptors it sends; protoc only
    records names set with the json_name option. Without this the generated
    modules would embed a larger descriptor than `protoc` itself produces.
    """
    for message in messages:
        for field in [*message.field, *message.extension]:
            if field.json_name == _default_json_name(field.name):
                field.ClearField("json_name")
        _strip_default_json_names(message.nested_type)


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    """Run the requested built-in generators on the request's files.

    Args:
        request: What buf sends: the files to generate and every file they import.

    Returns:
        The generated files, or an error naming what the bundled protoc said.
    """
    generators = [g.strip() for g in request.parameter.split(",") if g.strip()] or list(_DEFAULT_GENERATORS)
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    for proto in request.proto_file:
        _strip_default_json_names(proto.message_type)
        for extension in proto.extension:
            if extension.json_name == _default_json_name(extension.name):
                extension.ClearField("json_name")
    with tempfile.TemporaryDirectory() as tmp:
        descriptor_set = os.path.join(tmp, "input.binpb")
        with open(descriptor_set, "wb") as f:
            f.write(descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString())
        out = os.path.join(tmp, "out")
        os.mkdir(out)
        args = ["protoc", f"--descriptor_set_in={descriptor_set}"]
        args += [f"--{name}_out={out}" for name in generators]
        args += list(request.file_to_generate)
        if protoc.main(args) != 0:
            response.error = f"grpc_tools.protoc failed for {', '.join(request.file_to_generate)} (see stderr)"
            return response
        for root, _dirs, files in os.walk(out):
            for name in sorted(files):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    response.file.add(name=os.path.relpath(path, out).replace(os.sep, "/"), content=f.read())
    return response


def main() -> None:
    """Read a CodeGeneratorRequest on stdin, write the CodeGeneratorResponse on stdout."""
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(generate(request).SerializeToString())


if __name__ == "__main__":
    main()
