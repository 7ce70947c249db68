"""The fast YAML readers give exactly what PyYAML's loader gives, or leave the text to it."""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paraserve.api import parse_documents
from paraserve.api.yaml_reading import Loader, Unusual, _PlainScalars, _read_block, read_fast

TRICKY = [
    "", " ", "yes", "No", "on", "null", "~", "1", "-1", "0x1f", "0o17", "017", "1_000", "1.5",
    "1e3", ".inf", "-.inf", ".nan", "2024-01-01", "2024-01-01T10:00:00Z", "12:30:00", "=", "<<",
    "-", "- x", "-x", "?", "? x", "?x", ":", ":x", "a: b", "a:b", "a:", "a #b", "a#b", "#x",
    "'q'", '"q"', "it's", 'say "hi"', "back\\slash", "{}", "[]", "{a: 1}", "[1, 2]", "&a", "*a",
    "!tag", "|", ">", "%x", "@x", "`x", "a,b", "a b", " lead", "trail ", "two  spaces",
    "multi\nline", "tab\there", "ünïcödé", "gpu-00001", "nvidia.com/gpu", "80Gi", "8",
    "x" * 100, "word " * 30,
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**15), max_value=10**15),
    st.floats(allow_nan=False),
    st.sampled_from(TRICKY),
    st.text(alphabet=" abc-:#'\"\\{}[],&*!|>%@`?=\n\té", max_size=12),
)
keys = st.one_of(
    st.sampled_from(TRICKY), st.text(alphabet="ab-:# '\"./", max_size=8), st.integers()
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=25,
)
dump_options = st.fixed_dictionaries(
    {
        "default_flow_style": st.sampled_from([False, False, None, True]),
        "indent": st.sampled_from([2, 2, 3, 4]),
        "width": st.sampled_from([20, 80, 10**9]),
        "allow_unicode": st.booleans(),
        "explicit_start": st.booleans(),
    }
)


def loaded(text: str) -> list[Any] | type[Exception]:
    try:
        return list(yaml.load_all(text, Loader=Loader))
    except yaml.YAMLError:
        return yaml.YAMLError


def fast(text: str, reader: Any = read_fast) -> list[Any] | type[Exception] | None:
    """What a fast reader gives; None when it leaves the text to PyYAML."""
    try:
        return reader(text) if reader is read_fast else reader(text, _PlainScalars())
    except Unusual:
        return None
    except yaml.YAMLError:
        return yaml.YAMLError


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to itself (a dumped .nan is a value like any other)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(documents, min_size=1, max_size=3), dump_options)
def test_dumped_yaml_reads_as_the_loader_reads_it(docs: list[Any], options: dict[str, Any]):
    text = yaml.dump_all(docs, Dumper=yaml.SafeDumper, sort_keys=False, **options)
    expected = loaded(text)
    for reader in (read_fast, _read_block):
        got = fast(text, reader)
        assert got is None or same(got, expected), (reader.__name__, text)


EDITS = [" ", "  ", "-", "- ", ":", ": ", "#", " #", "'", '"', "\n", "\n  ", "|", "{", "&", "\\"]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.data())
def test_damaged_yaml_is_never_read_differently(doc: Any, data: st.DataObject):
    """Edited at random, the text reads as the loader reads it, is refused as it refuses it,
    or is left to the loader: a fast reader never accepts what the loader would not."""
    text = yaml.dump(doc, Dumper=yaml.SafeDumper, default_flow_style=False, sort_keys=False)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()):
            text = text[:at] + data.draw(st.sampled_from(EDITS)) + text[at:]
        else:
            text = text[:at] + text[at + data.draw(st.integers(1, 3)) :]
    expected = loaded(text)
    for reader in (read_fast, _read_block):
        got = fast(text, reader)
        if got is yaml.YAMLError:
            assert expected is yaml.YAMLError, (reader.__name__, text)
        else:
            assert got is None or same(got, expected), (reader.__name__, text)


KUBECTL_POD = """\
- apiVersion: v1
  kind: Pod
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p-{i}"}}}}
    creationTimestamp: "2026-01-01T00:00:00Z"
    labels:
      app: x
      paraserve.dev/rank: "{i}"
    managedFields:
    - apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1:
        f:spec:
          f:containers:
            k:{{"name":"rank"}}:
              .: {{}}
    name: p-{i}
    namespace: default
    resourceVersion: "{i}"
  spec:
    containers:
    - args:
      - --port
      - "8000"
      name: rank
      resources:
        limits:
          nvidia.com/gpu: "1"
    nodeName: gpu-{i}
    tolerations:
    - effect: NoSchedule
      key: k
      operator: Exists
  status:
    conditions:
    - lastProbeTime: null
      status: "True"
      type: Ready
    phase: Running
"""


def kubectl_list(count: int) -> str:
    """`kubectl get pods -o yaml` as kubectl prints it: indentless sequences, quoted numbers,
    a last-applied annotation as a literal block, managed fields, an empty string."""
    pods = "".join(KUBECTL_POD.format(i=i) for i in range(count))
    return f'apiVersion: v1\nitems:\n{pods}kind: List\nmetadata:\n  resourceVersion: ""\n'


def test_kubectl_output_takes_the_line_reader():
    text = kubectl_list(20)
    documents = _read_block(text, _PlainScalars())
    assert documents == list(yaml.load_all(text, Loader=Loader))
    pod = documents[0]["items"][3]
    assert pod["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] == (
        '{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p-3"}}\n'
    )


def test_the_benchmark_pool_takes_the_line_reader():
    nodes = [
        {
            "metadata": {"name": f"gpu-{i}", "labels": {"nvidia.com/gpu.memory": "81920"}},
            "spec": {"taints": [{"effect": "NoSchedule", "key": "gpu"}]} if i % 2 else {},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}},
        }
        for i in range(3)
    ]
    text = yaml.dump({"items": nodes, "kind": "List"}, Dumper=yaml.SafeDumper)
    assert _read_block(text, _PlainScalars()) == list(yaml.load_all(text, Loader=Loader))


@pytest.mark.parametrize(
    "text",
    [
        "a: &x 1\nb: *x\n",
        "a: !!int '3'\n",
        "<<: {a: 1}\n",
        "b: {c: [1, 2], d: 'e'}\n",
        "a: |+\n  keep\n\n",
        "a: >\n  folded\n  text\n",
        "a: 'two\n  lines'\n",
        "x: ! 12\n",
    ],
)
def test_unusual_yaml_still_reads_as_the_loader_reads_it(text: str):
    assert parse_documents(text, "t") == [d for d in yaml.load_all(text, Loader=Loader) if d]


def test_bad_yaml_is_still_reported_by_the_loader():
    with pytest.raises(ValueError, match="not valid YAML"):
        parse_documents("a: b: c\n", "t")
