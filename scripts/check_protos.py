#!/usr/bin/env python3
"""Checks weir's .proto subset (Protos/) against the public Envoy API as published in xds-protos.

Every message, field and enum value weir declares must exist in the public API with the same
full name, number, wire type, cardinality and message/enum type. Prints each mismatch; exit 1 on any.
Usage: check_protos.py DESCRIPTOR_SET   (protoc --include_imports --descriptor_set_out of Protos/)
"""
import importlib, pkgutil, sys
from google.protobuf import descriptor_pb2, descriptor_pool

import envoy  # xds-protos

def load_public():
    # Import every generated module of the xds-protos packages we mirror, so the default pool knows them.
    for pkg in ("envoy.config", "envoy.service.discovery", "envoy.extensions.filters", "envoy.extensions.access_loggers",
                "envoy.extensions.upstreams.http", "envoy.extensions.transport_sockets.tls", "envoy.type", "google.rpc"):
        mod = importlib.import_module(pkg)
        for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
            if info.name.endswith("_pb2"):
                try:
                    importlib.import_module(info.name)
                except Exception:
                    pass
    return descriptor_pool.Default()

def main(path):
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(open(path, "rb").read())
    public = load_public()
    problems, checked = [], 0

    def check_message(prefix, msg):
        nonlocal checked
        full = f"{prefix}.{msg.name}"
        if msg.options.map_entry:
            return
        try:
            theirs = public.FindMessageTypeByName(full)
        except KeyError:
            problems.append(f"{full}: no such message in the public API"); return
        for f in msg.field:
            checked += 1
            t = theirs.fields_by_number.get(f.number)
            if t is None:
                problems.append(f"{full}.{f.name} = {f.number}: no field with that number"); continue
            if t.name != f.name:
                problems.append(f"{full}.{f.name} = {f.number}: public name is {t.name}")
            if t.type != f.type:
                problems.append(f"{full}.{f.name}: type {f.type}, public {t.type}")
            if t.is_repeated != (f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED):
                problems.append(f"{full}.{f.name}: cardinality differs")
            ours_type = f.type_name.lstrip(".")
            their_type = (t.message_type.full_name if t.message_type else t.enum_type.full_name if t.enum_type else "")
            if ours_type != their_type:
                problems.append(f"{full}.{f.name}: type {ours_type}, public {their_type}")
        for e in msg.enum_type:
            check_enum(full, e)
        for n in msg.nested_type:
            check_message(full, n)

    def check_enum(prefix, enum):
        nonlocal checked
        full = f"{prefix}.{enum.name}"
        try:
            theirs = public.FindEnumTypeByName(full)
        except KeyError:
            problems.append(f"{full}: no such enum in the public API"); return
        for v in enum.value:
            checked += 1
            tv = theirs.values_by_number.get(v.number)
            if tv is None or tv.name != v.name:
                problems.append(f"{full}.{v.name} = {v.number}: public has {tv.name if tv else 'nothing'}")

    for fd in fds.file:
        if fd.package.startswith("google.protobuf"):
            continue
        for m in fd.message_type:
            check_message(fd.package, m)
        for e in fd.enum_type:
            check_enum(fd.package, e)
        for s in fd.service:
            theirs = public.FindServiceByName(f"{fd.package}.{s.name}")
            for m in s.method:
                checked += 1
                tm = theirs.methods_by_name.get(m.name)
                if tm is None or tm.input_type.full_name != m.input_type.lstrip(".") or tm.output_type.full_name != m.output_type.lstrip("."):
                    problems.append(f"{fd.package}.{s.name}/{m.name}: differs from the public service")
    for p in problems:
        print(p)
    print(f"{checked} fields, enum values and methods checked, {len(problems)} mismatches")
    return 1 if problems else 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
