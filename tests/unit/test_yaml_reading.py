"""The fast YAML readers give exactly what PyYAML's loader gives, or leave the text to it."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paraserve.api import parse_documents
from paraserve.api.yaml_block import _OUTSIDE_SUBSET, outside_subset, read_block
from paraserve.api.yaml_reading import Loader, Unusual, read_fast
from paraserve.api.yaml_scalars import PlainScalars

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
        return reader(text) if reader is read_fast else reader(text, PlainScalars())
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
    for reader in (read_fast, read_block):
        got = fast(text, reader)
        assert got is None or same(got, expected), (reader.__name__, text)


EDITS = [" ", "  ", "-", "- ", ":", ": ", "#", " #", "'", '"', "\n", "\n  ", "|", "{", "&", "\\"]


def damaged(text: str, data: st.DataObject, edits: list[str]) -> str:
    """`text` with one to three random insertions (of `edits`) or deletions."""
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()):
            text = text[:at] + data.draw(st.sampled_from(edits)) + text[at:]
        else:
            text = text[:at] + text[at + data.draw(st.integers(1, 3)) :]
    return text


def assert_read_as_the_loader_reads(text: str) -> None:
    """Each fast reader reads `text` as the loader does, refuses it as the loader does, or
    leaves it to the loader: it never accepts what the loader would not."""
    expected = loaded(text)
    for reader in (read_fast, read_block):
        got = fast(text, reader)
        if got is yaml.YAMLError:
            assert expected is yaml.YAMLError, (reader.__name__, text)
        else:
            assert got is None or same(got, expected), (reader.__name__, text)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.data())
def test_damaged_yaml_is_never_read_differently(doc: Any, data: st.DataObject):
    """Edited at random, the text reads as the loader reads it, is refused as it refuses it,
    or is left to the loader: a fast reader never accepts what the loader would not."""
    text = yaml.dump(doc, Dumper=yaml.SafeDumper, default_flow_style=False, sort_keys=False)
    assert_read_as_the_loader_reads(damaged(text, data, EDITS))


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
    documents = read_block(text, PlainScalars())
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
    assert read_block(text, PlainScalars()) == list(yaml.load_all(text, Loader=Loader))


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


# --- the line reader's shortcuts: known lines, known keys, item after item ---------------------

# Few keys and values, so that the same line comes back at other columns, in items, after
# dedents and in later documents: the line reader takes a line it has seen by its content.
FEW_KEYS = ["a", "b", "name", "-x", "c:d", "--- a", "... b", "1", "yes", "'q'"]
FEW_VALUES = ["1", "x", "gpu-1", "'8'", "null", "{}", "[]", "- y", "--- z", "a: b", "", "|"]
repetitive = st.recursive(
    st.sampled_from(FEW_VALUES) | st.none() | st.integers(0, 3),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(FEW_KEYS) | st.integers(0, 2), inner, max_size=4),
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(repetitive, min_size=1, max_size=4), dump_options, st.booleans())
def test_repeated_lines_read_as_the_loader_reads_them(
    docs: list[Any], options: dict[str, Any], block: bool
):
    if block:  # mostly what the line reader takes
        options = {**options, "default_flow_style": False, "width": 10**9}
    text = yaml.dump_all(docs, Dumper=yaml.SafeDumper, sort_keys=False, **options)
    expected = loaded(text)
    for reader in (read_fast, read_block):
        got = fast(text, reader)
        assert got is None or same(got, expected), (reader.__name__, text)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(repetitive, min_size=1, max_size=3), st.data())
def test_damaged_repeated_lines_are_never_read_differently(docs: list[Any], data: st.DataObject):
    text = yaml.dump_all(docs, Dumper=yaml.SafeDumper, default_flow_style=False, sort_keys=False)
    assert_read_as_the_loader_reads(damaged(text, data, [*EDITS, "---\n", "... ", "- "]))


@pytest.mark.parametrize(
    "text",
    [
        # A known line as the first line of a later document, with and without ---.
        "a: 1\nb: 2\n---\na: 1\nb: 2\n",
        "- a: 1\n---\na: 1\n",
        # Keys that would be markers at column 0, known from deeper lines first.
        "x:\n  --- a: 1\n  ... b:\n--- a: 1\n",
        "x:\n  --- a: 1\n--- a: 1\n",
        # A known `key:` then a line at its column: null; then deeper: a block.
        "a:\n  b:\n  c: 1\nd:\n  b:\n    c: 1\n",
        # The key after an indentless sequence, known from before it.
        "k: 1\nl:\n- k: 1\n- k: 1\nk: 1\n",
        "l:\n- m:\n  - k: 1\n  k: 1\nk: 2\n",
        # Known lines inside a literal block are its text.
        "a: 1\nb: |\n  a: 1\n  - x\nc: 1\n",
        "a: 1\nb: |-\n  a: 1",
        # Comments and blank lines between known lines; a known line after a comment.
        "a: 1\n# a: 1\n\na: 1\n",
        # A known line deeper than anything open: refused like the loader.
        "a: 1\nb: 2\n  a: 1\n",
        "a:\n- 1\n  a: 1\n",
        # Known item lines `- key: value`, indentless and indented, nested, after a bare `-`.
        "l:\n- a: 1\n- a: 1\nm:\n  - a: 1\n  - a: 1\n",
        "- a: 1\n- - a: 1\n- a: 1\n  - a: 1\n",
        "- a: 1\n  b: 2\n- a: 1\nb: 2\n",
        "a:\n- a: 1\n-\n- a: 1\n- a:\n  - a:\n    - a: 1\n",
        "- a: 1\n---\n- a: 1\n...\n",
        # Duplicate keys: the last value, at the first key's place.
        "a: 1\nb: 2\na: 3\n",
        # Trailing spaces after a known key.
        "a: 1\na: 1 \nb: \n",
        "a: 1\na: \n  b: 1\n",
        "a: 1\na: \nc: 1\na: \n",
    ],
)
def test_line_reader_edges_read_as_the_loader_reads_them(text: str):
    """Each line it takes by what it has seen before reads as the loader reads it."""
    expected = loaded(text)
    got = fast(text, read_block)
    if got is yaml.YAMLError:
        assert expected is yaml.YAMLError
    else:
        assert got is None or same(got, expected), got
    assert parse_or_error(text) == parse_or_error(text, loader_only=True)


def parse_or_error(text: str, *, loader_only: bool = False) -> Any:
    if loader_only:
        try:
            return [d for d in yaml.load_all(text, Loader=Loader) if d is not None]
        except yaml.YAMLError:
            return "error"
    try:
        return parse_documents(text, "t")
    except ValueError:
        return "error"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20))
def test_the_subset_check_is_the_pattern(text: str):
    """outside_subset's bytes.translate for ASCII text agrees with the character class."""
    assert outside_subset(text) == (re.search(_OUTSIDE_SUBSET, text) is not None)
    ascii_text = text.encode("ascii", "replace").decode("ascii")
    assert outside_subset(ascii_text) == (re.search(_OUTSIDE_SUBSET, ascii_text) is not None)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=12) | st.sampled_from(TRICKY))
def test_plain_scalars_are_what_the_resolver_makes(text: str):
    """Texts no implicit resolver looks at are strings, without asking the resolver."""
    resolver = yaml.SafeLoader("")
    tag = resolver.resolve(yaml.ScalarNode, text, (True, False))
    if tag in ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"):
        with pytest.raises(Unusual):
            PlainScalars()(text)
        return
    try:
        expected: Any = resolver.construct_object(yaml.ScalarNode(tag, text))
    except (ValueError, yaml.YAMLError) as error:  # month 13; `&` alone (never plain)
        expected = type(error)
    try:
        got: Any = PlainScalars()(text)
    except (ValueError, yaml.YAMLError) as error:
        got = type(error)
    assert same(got, expected), (text, tag)


def pool_file(nodes: int, pods: int) -> str:
    """A List of Node and Pod objects as bench/plan_bench.py writes it (PyYAML's dumper)."""
    items: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": f"gpu-{i:05d}", "labels": {"paraserve.dev/pool": "a"}},
            "spec": {},
            "status": {"allocatable": {"cpu": "127", "nvidia.com/gpu": "8"}},
        }
        for i in range(nodes)
    ]
    items += [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"job-{i}", "namespace": "default"},
            "spec": {
                "nodeName": f"gpu-{i % nodes:05d}",
                "containers": [{"name": "main", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
            },
            "status": {"phase": "Running"},
        }
        for i in range(pods)
    ]
    return yaml.dump({"apiVersion": "v1", "kind": "List", "items": items}, Dumper=yaml.SafeDumper)


def test_a_pool_file_and_kubectl_output_take_the_line_reader_whole():
    for text in (pool_file(50, 100), kubectl_list(30)):
        assert read_block(text, PlainScalars()) == list(yaml.load_all(text, Loader=Loader))
