"""The error-reason vocabulary is one documented list, and the server sticks to it.

The reasons are the ``assay.v1.ErrorReason`` enum (protos/assay/v1/errors.proto); the
server's table is ``assay.vocab.errors.REASONS``; docs/errors.md is generated from both.
Every reason raised anywhere in server/ or kernels/ (a ``reason=`` literal or a class's
``default_reason``) must be listed, with the status code its exception class gives.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from assay.server.edge.interceptors import to_status
from assay.v1 import errors_pb2
from assay.vocab import errors
from assay.vocab.errors import REASONS, AssayError, InvalidInput, ResourceExhausted

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "server").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")])
# Exception class name -> status code name, for the classes of clients/python/vocab/errors.py.
CLASS_CODES = {name: cls.code_name for name, cls in vars(errors).items()
               if isinstance(cls, type) and issubclass(cls, AssayError)}
# The proto's wire names, in declaration order.
PROTO_REASONS = [v.name.removeprefix("ERROR_REASON_")
                 for v in errors_pb2.ErrorReason.DESCRIPTOR.values if v.number != 0]


def _gen_errors():
    spec = importlib.util.spec_from_file_location("gen_errors", ROOT / "docs" / "gen_errors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _raised_reasons() -> list[tuple[str, str, str | None]]:
    """(reason, "path:line", exception class name or None) of every reason in the code."""
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg != "reason":
                        continue
                    func = node.func
                    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                    value = keyword.value
                    if isinstance(value, ast.Attribute) and value.attr == "reason":
                        continue  # passing an error's (checked) reason on: error.reason
                    assert isinstance(keyword.value, ast.Constant), (
                        f"{where}: reason= must be a literal, so that it can be checked "
                        "against the documented list")
                    found.append((keyword.value.value, where, name))
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if (isinstance(item, ast.Assign) and isinstance(item.value, ast.Constant)
                            and any(isinstance(t, ast.Name) and t.id == "default_reason"
                                    for t in item.targets)):
                        found.append((item.value.value, where, node.name))
    return found


def test_the_server_table_is_the_proto_enum_in_order():
    assert list(REASONS) == PROTO_REASONS


def test_every_reason_raised_anywhere_is_documented():
    found = _raised_reasons()
    assert len(found) > 80, f"the scan found only {len(found)} reasons: is it still working?"
    missing = sorted({f"{reason} ({where})" for reason, where, _ in found
                      if reason not in REASONS})
    assert not missing, ("add these to ErrorReason in protos/assay/v1/errors.proto and to "
                         "REASONS in clients/python/vocab/errors.py, then bash "
                         f"protos/generate.sh: {missing}")


def test_each_reason_keeps_one_status_code():
    found = _raised_reasons()
    classes = {name: cls for name, cls in CLASS_CODES.items()}
    for path in SOURCES:  # domain errors defined outside vocab/errors.py
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if (isinstance(item, ast.Assign) and isinstance(item.value, ast.Constant)
                            and any(isinstance(t, ast.Name) and t.id == "code_name"
                                    for t in item.targets)):
                        classes.setdefault(node.name, item.value.value)
    wrong = [f"{where}: {reason} raised as {classes[name]}, documented as "
             f"{REASONS[reason].code}"
             for reason, where, name in found
             if reason in REASONS and name in classes and classes[name] != REASONS[reason].code]
    assert not wrong, wrong


def test_every_proto_comment_starts_with_the_status_code():
    comments = _gen_errors().reason_comments()
    assert list(comments) == PROTO_REASONS
    for name, comment in comments.items():
        assert comment.startswith(f"{REASONS[name].code}. "), (name, comment)
        assert len(comment) > len(REASONS[name].code) + 10, f"{name} has no description"


def test_reasons_are_short_upper_snake_names():
    # google.rpc.ErrorInfo: UPPER_SNAKE_CASE, [A-Z][A-Z0-9_]+[A-Z0-9], at most 63 characters.
    for name in REASONS:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+[A-Z0-9]", name) and len(name) <= 63, name


def test_docs_page_is_the_generated_one():
    gen = _gen_errors()
    assert (ROOT / "docs" / "errors.md").read_text() == gen.render(), \
        "regenerate it: bash protos/generate.sh (or python docs/gen_errors.py)"


def _details(error: AssayError) -> dict[str, object]:
    out = {}
    for any_ in to_status(error).details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo,
                     error_details_pb2.BadRequest):
            message = kind()
            if any_.Unpack(message):
                out[kind.DESCRIPTOR.name] = message
    return out


@pytest.mark.parametrize("reason", sorted(REASONS))
def test_retry_info_exactly_on_retryable_reasons(reason):
    details = _details(AssayError("x", reason=reason, field="f"))
    assert details["ErrorInfo"].reason == reason
    assert details["ErrorInfo"].domain == "assay.v1"
    assert details["ErrorInfo"].metadata["field"] == "f"
    hint = REASONS[reason].retry_after
    if hint is None:
        assert "RetryInfo" not in details
    else:
        assert details["RetryInfo"].retry_delay == duration_pb2.Duration(
            seconds=int(hint), nanos=round((hint - int(hint)) * 1e9))


def test_a_raiser_may_give_its_own_back_off():
    details = _details(ResourceExhausted("busy", reason="TOO_MANY_SELECTS", retry_after=2.25))
    assert details["RetryInfo"].retry_delay == duration_pb2.Duration(seconds=2, nanos=250_000_000)


def test_the_documented_retryable_refusals_have_a_hint():
    # Section 7 of issue 11: the concurrency limit, the Select queue, disk full, shards.
    for reason in ("TOO_MANY_REQUESTS", "TOO_MANY_SELECTS", "DISK_FULL", "SHARD_UNAVAILABLE"):
        assert REASONS[reason].retry_after and REASONS[reason].retry_after > 0, reason
    details = _details(InvalidInput("bad", field="params.budget"))
    assert details["BadRequest"].field_violations[0].field == "params.budget"
    assert "RetryInfo" not in details
