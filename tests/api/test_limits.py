"""Input limits: a file or API object past them is refused whole, with a line and a sentence."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.api.bombs import alias_bomb, plugin
from wasmxds.api.convert import FieldPath
from wasmxds.api.files import ConfigFileError, iter_config_files, read_config_file
from wasmxds.api.limits import DEFAULT_LIMITS, Limits, check_value
from wasmxds.api.objects import Severity
from wasmxds.api.parse import parse_bytes, parse_file, parse_object, parse_text
from wasmxds.api.yamlload import YamlLimitError, YamlSyntaxError, load_documents

SMALL = Limits(max_bytes=4096, max_documents=3, max_values=1000, max_text=2000, max_depth=10)


def refused(text: str, limits: Limits = DEFAULT_LIMITS) -> YamlLimitError:
    with pytest.raises(YamlLimitError) as raised:
        load_documents(text, limits)
    return raised.value


def refused_syntax(text: str) -> YamlSyntaxError:
    with pytest.raises(YamlSyntaxError) as raised:
        load_documents(text)
    return raised.value


class TestLoadDocuments:
    def test_limit_error_is_a_syntax_error(self) -> None:
        """Every caller that refuses unreadable YAML refuses a file past a limit the same way."""
        assert issubclass(YamlLimitError, YamlSyntaxError)

    def test_values_are_counted_across_documents(self) -> None:
        """Documents each within the value limit still refuse the file when their sum is not."""
        document = "---\nitems: [" + ", ".join(["x"] * 300) + "]\n"
        load_documents(document * 3, SMALL)
        error = refused(document * 4, Limits(max_values=1000))
        assert "the file expands to more than 1000 values" in error.message
        assert error.line == 8  # in the fourth document, where the count ran out

    def test_bomb_is_abandoned_at_the_limit(self) -> None:
        """A bomb of 10**12 values is given up at the limit (it could never finish otherwise)."""
        error = refused(alias_bomb(12), SMALL)
        assert "more than 1000 values" in error.message
        assert "alias" in error.message
        assert 1 <= error.line <= 12

    def test_default_limit_refuses_a_multi_document_bomb(self) -> None:
        """Sixteen million-value documents (the old cap was per document) are one refused file."""
        text = "".join("---\n" + alias_bomb(6) for _ in range(16))
        assert len(text) < 10_000
        error = refused(text)
        assert f"more than {DEFAULT_LIMITS.max_values} values" in error.message
        assert error.line == 7  # where the first document's aliases are used

    def test_documents_per_file(self) -> None:
        """A file with more documents than the limit is refused at the first one too many."""
        error = refused("---\na: 1\n" * 4, SMALL)
        assert "more than 3 YAML documents" in error.message
        assert error.line == 8

    def test_expanded_text(self) -> None:
        """A long string repeated through aliases is refused by the text limit."""
        text = f"a: &a {'y' * 500}\nb: [*a, *a, *a, *a, *a]\n"
        error = refused(text, SMALL)
        assert "of keys and strings" in error.message
        assert error.line == 2

    def test_depth(self) -> None:
        """Nesting past the limit is refused at its line, not a RecursionError."""
        nested = "".join("  " * i + "k:\n" for i in range(12)) + "  " * 12 + "v\n"
        error = refused(nested, SMALL)
        assert "nested more than 10 levels" in error.message
        assert error.line == 11  # the mapping that is the eleventh level

    def test_deep_nesting_within_libyaml_limit(self) -> None:
        """990 levels of block nesting (libyaml allows 1,000) is refused, not a crash."""
        nested = "".join("  " * i + "k:\n" for i in range(990)) + "  " * 990 + "v\n"
        assert "nested more than" in refused(nested).message

    def test_tagged_nodes_are_counted_while_composing(self) -> None:
        """Explicitly tagged values, which skip the resolver, still count towards the limit."""
        text = "a: [" + ", ".join(["!!str x"] * 1200) + "]\n"
        assert "more than 1000 values" in refused(text, Limits(max_values=1000)).message

    def test_file_size(self) -> None:
        """Text over the size limit is refused before it is parsed."""
        error = refused("a: " + "x" * 5000 + "\n", SMALL)
        assert "larger than 4096 bytes" in error.message

    def test_within_limits_loads(self) -> None:
        """An ordinary file with anchors and merge keys is untouched by the limits."""
        text = "base: &b {a: 1}\nuse:\n  <<: *b\n  c: 2\n"
        (document,) = load_documents(text, SMALL)
        assert document.value == {"base": {"a": 1}, "use": {"a": 1, "c": 2}}


class TestMergeKeys:
    def test_every_merge_source_and_pair_counts(self) -> None:
        """Merged pairs count before they are kept, even when later sources repeat the keys."""
        keys = "".join(f"  k{i}: 1\n" for i in range(300))
        anchors = "".join(f"m{n}: &m{n}\n{keys}" for n in range(4))
        merges = "".join(f"x{n}:\n  <<: [*m0, *m1, *m2, *m3]\n" for n in range(3))
        text = anchors + merges
        load_documents(anchors + merges, Limits(max_values=10_000))
        error = refused(text, Limits(max_values=5000))
        assert "more than 5000 values" in error.message
        assert error.line == text.count("\n")  # the line of the <<

    def test_repeated_source_is_merged_once(self) -> None:
        """The same anchored mapping merged ten thousand times is read once, quickly."""
        keys = "".join(f"  k{i}: 1\n" for i in range(1000))
        text = f"big: &b\n{keys}x:\n  <<: [{', '.join(['*b'] * 10_000)}]\n"
        started = time.perf_counter()
        (document,) = load_documents(text)
        elapsed = time.perf_counter() - started
        print(f"{len(text)} bytes, 1000 keys merged 10,000 times: {elapsed:.3f} s")
        assert isinstance(document.value, dict)
        assert document.value["x"] == document.value["big"]
        assert len(document.value["x"]) == 1000

    @pytest.mark.parametrize("source", ["s: &s 1\n", "s: &s [a: 1]\n"])
    def test_source_that_is_not_a_mapping_refuses_the_file(self, source: str) -> None:
        """A scalar or list merged with << is a YAML error on the <<, not a silent skip."""
        text = source + "x:\n  <<: [" + ", ".join(["*s"] * 1000) + "]\n"
        with pytest.raises(YamlSyntaxError) as raised:
            load_documents(text)
        assert raised.value.line == 3
        assert "a merge key (<<) takes a mapping or a list of mappings" in raised.value.message
        assert "on line 1 is not one" in raised.value.message

    def test_tag_after_a_next_line_character_is_counted(self) -> None:
        """A tag after NEL (U+0085), a line break to libyaml, still counts while composing."""
        # Duplicate keys are never built, so only the count while composing can see them.
        text = "{" + ",".join(["\x85!!str k: \x85!a v"] * 2000) + "}"
        assert "more than 1000 values" in refused(text, Limits(max_values=1000)).message


class TestAliases:
    def test_aliased_list_is_shared_not_copied(self) -> None:
        """An alias of a list or mapping is the same value again, charged in full but not copied."""
        text = "a: &a {k: [1, 2, 3]}\nb: [*a, *a, *a]\n"
        (document,) = load_documents(text)
        assert isinstance(document.value, dict)
        first, second, third = document.value["b"]
        assert first is second is third is document.value["a"]
        assert first == {"k": [1, 2, 3]}
        # The document 1, a 5, b 1, and 5 for each of its three aliases: 22.
        load_documents(text, Limits(max_values=22))
        assert refused(text, Limits(max_values=21)).line == 2

    def test_alias_bomb_costs_what_is_written(self) -> None:
        """A bomb whose expansion passes the limit is refused after building only what it writes."""
        text = alias_bomb(9)
        started = time.perf_counter()
        error = refused(text)
        print(f"alias bomb of 10**9 values refused in {time.perf_counter() - started:.4f} s")
        assert error.line == 6  # the first alias whose expansion does not fit

    def test_problem_inside_an_alias_is_reported_where_it_is_used(self) -> None:
        """A shared value with a problem brings the problem to each use, at the use's line."""
        (document,) = load_documents("a: &x {k: !t 1}\nb: [*x, *x]\n")
        found = [(str(issue), issue.line) for issue in document.issues]
        assert found == [
            ("a.k: unsupported YAML tag !t", 1),
            ("b[0].k: unsupported YAML tag !t", 2),
            ("b[1].k: unsupported YAML tag !t", 2),
        ]
        # A bomb of such values stops at the limit without building it.
        bomb = alias_bomb(9).replace("[x,", "[!t x,", 1)
        assert "more than" in refused(bomb).message

    def test_deep_line_of_aliases_stores_few_lines(self) -> None:
        """98 levels on one line holding 240,000 aliases stores no line per value."""
        text = "a: &a 1\nb: " + "[" * 98 + ", ".join(["*a"] * 240_000) + "]" * 98 + "\n"
        (document,) = load_documents(text)
        assert len(document.lines) < 10
        deepest: FieldPath = ("b", *([0] * 97), 239_999)
        assert document.lines(deepest) == 2


class TestParse:
    def test_plugin_config_bomb_is_an_error_on_the_file(self) -> None:
        """The 539-byte pluginConfig bomb of issue 10 is a reported error, not a silent drop."""
        text = plugin(config=alias_bomb(7, "    "))
        parsed = parse_text(text, "p.yaml")
        assert not parsed.syntax_ok
        (problem,) = parsed.problems
        assert problem.is_error
        assert problem.path == "p.yaml"
        assert problem.line >= 8
        assert "expands to more than 250000 values" in problem.message

    def test_bomb_in_a_document_of_another_kind_is_reported(self) -> None:
        """A bomb in a ConfigMap (not a WasmPlugin) is still a problem on the file."""
        text = plugin() + "---\napiVersion: v1\nkind: ConfigMap\ndata:\n" + alias_bomb(7, "  ")
        parsed = parse_text(text, "mixed.yaml")
        assert not parsed.syntax_ok
        assert parsed.plugins == ()
        (problem,) = parsed.problems
        assert problem.line > 9
        assert "expands to more than" in problem.message

    def test_bytes_over_the_size_limit(self) -> None:
        """parse_bytes refuses content over the size limit at line 1, before decoding it."""
        parsed = parse_bytes(b"a: 1\n" * 1000, "big.yaml", limits=SMALL)
        assert not parsed.syntax_ok
        assert [(p.line, p.message) for p in parsed.problems] == [(1, SMALL.too_big())]

    def test_file_over_the_size_limit_is_read_only_to_the_limit(self, tmp_path: Path) -> None:
        """A huge (sparse) file is refused without being read whole."""
        path = tmp_path / "huge.yaml"
        with path.open("wb") as file:
            file.truncate(8 << 30)  # 8 GiB of holes: reading it whole would not fit
        parsed = parse_file(path)
        assert not parsed.syntax_ok
        assert parsed.problems[0].message == DEFAULT_LIMITS.too_big()

    def test_object_past_the_limits_keeps_its_key(self) -> None:
        """An API object over the value limit is refused with its key, so its last version stays."""
        value = {
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": {"name": "big", "namespace": "edge"},
            "spec": {"url": "oci://ghcr.io/acme/f:v1", "pluginConfig": {"list": [0] * 2000}},
        }
        parsed = parse_object(value, source="kubernetes:edge/big", source_limits=SMALL)
        assert parsed is not None
        assert parsed.plugin is None
        assert str(parsed.key) == "edge/big"
        (problem,) = parsed.problems
        assert problem.path == "kubernetes:edge/big"
        assert problem.message.startswith("the object expands to more than 1000 values")


class TestCheckValue:
    @pytest.mark.parametrize(
        ("value", "fragment"),
        [
            pytest.param(list(range(1001)), "more than 1000 values", id="values"),
            pytest.param({"k": "x" * 2001}, "of keys and strings", id="text"),
            pytest.param({"k" * 2001: 1}, "of keys and strings", id="key-text"),
            pytest.param([[[[[[[[[[[1]]]]]]]]]]], "nested more than 10 levels", id="depth"),
        ],
    )
    def test_each_limit(self, value: object, fragment: str) -> None:
        """Each limit is checked on plain data and named in the reason."""
        reason = check_value(value, "the object", SMALL)
        assert fragment in (reason or "")

    def test_within_limits(self) -> None:
        """Data inside every limit passes."""
        assert check_value({"a": [1, 2, {"b": "c"}]}, "the object", SMALL) is None

    def test_deep_data_is_checked_without_recursion(self) -> None:
        """100,000 levels of nesting are refused, not a RecursionError."""
        deep: object = 1
        for _ in range(100_000):
            deep = [deep]
        assert "nested more than" in (check_value(deep, "the object") or "")


class TestFiles:
    def test_symlink_loop_is_listed_and_explained(self, tmp_path: Path) -> None:
        """A config-file name whose links loop is listed, and reading it names the loop."""
        (tmp_path / "a.yaml").symlink_to("b.yaml")
        (tmp_path / "b.yaml").symlink_to("a.yaml")
        (tmp_path / "ok.yaml").write_text("a: 1\n")
        assert [p.name for p in iter_config_files(tmp_path)] == ["a.yaml", "b.yaml", "ok.yaml"]
        with pytest.raises(ConfigFileError) as raised:
            read_config_file(tmp_path / "a.yaml", 100)
        assert "goes round in a loop (a.yaml -> b.yaml -> a.yaml)" in raised.value.reason
        assert not raised.value.missing

    def test_links_of_any_name_that_loop_or_name_a_directory_are_listed(
        self, tmp_path: Path
    ) -> None:
        """Loops and directory links are listed whatever their name; hidden ones are not."""
        (tmp_path / "loop").symlink_to("loop")
        (tmp_path / "sub").symlink_to(".")
        (tmp_path / ".hidden").symlink_to(".hidden")
        (tmp_path / "notes.txt").write_text("not config\n")
        assert [p.name for p in iter_config_files(tmp_path)] == ["loop", "sub"]
        with pytest.raises(ConfigFileError) as raised:
            read_config_file(tmp_path / "sub", 100)
        assert raised.value.severity is Severity.WARNING

    def test_parse_file_reports_a_symlink_loop(self, tmp_path: Path) -> None:
        """parse_file turns a loop into a problem on the file (so validate reports it)."""
        (tmp_path / "self.yaml").symlink_to("self.yaml")
        parsed = parse_file(tmp_path / "self.yaml")
        assert not parsed.syntax_ok
        assert "symbolic link never reaches a file" in parsed.problems[0].message

    def test_fifo_is_not_read(self, tmp_path: Path) -> None:
        """A FIFO named like a config file is refused at once instead of blocking the read."""
        os.mkfifo(tmp_path / "pipe.yaml")
        with pytest.raises(ConfigFileError) as raised:
            read_config_file(tmp_path / "pipe.yaml", 100)
        assert "not a regular file" in raised.value.reason

    def test_read_stops_after_the_limit(self, tmp_path: Path) -> None:
        """At most one byte past the limit is read."""
        (tmp_path / "big.yaml").write_bytes(b"x" * 1000)
        assert len(read_config_file(tmp_path / "big.yaml", 10)) == 11

    def test_special_files_with_config_names_are_listed_and_explained(self, tmp_path: Path) -> None:
        """A FIFO or device named *.yaml is an error, a dangling link a warning; none is opened."""
        os.mkfifo(tmp_path / "pipe.yaml")
        os.mkfifo(tmp_path / "pipe.txt")
        (tmp_path / "null.yaml").symlink_to("/dev/null")
        (tmp_path / "dangling.yaml").symlink_to("nowhere.yaml")
        (tmp_path / "ok.yaml").write_text("a: 1\n")
        listed = [p.name for p in iter_config_files(tmp_path)]
        assert listed == ["dangling.yaml", "null.yaml", "ok.yaml", "pipe.yaml"]
        problems = {
            name: parse_file(tmp_path / name).problems for name in listed if name != "ok.yaml"
        }
        (dangling,) = problems["dangling.yaml"]
        assert (dangling.line, dangling.severity) == (1, Severity.WARNING)
        assert "points to nowhere.yaml, which does not exist" in dangling.message
        (null,) = problems["null.yaml"]
        assert (null.line, null.is_error) == (1, True)
        assert "it is a device (through the symbolic link to /dev/null)" in null.message
        (pipe,) = problems["pipe.yaml"]
        assert (pipe.line, pipe.is_error) == (1, True)
        assert "it is a FIFO (named pipe), not a regular file" in pipe.message
        assert "rename it so it does not end in .yaml" in pipe.message

    def test_libyaml_nesting_limit_says_what_to_do(self) -> None:
        """libyaml's own depth guard (often an unclosed bracket) comes with advice."""
        error = refused_syntax("a: " + "[" * 2000 + "\n")
        assert "exceeded maximum nesting depth" in error.message
        assert "close any bracket ([ or {) left open" in error.message
