"""The committed example filter module has exactly the proxy-wasm ABI surface Envoy expects.

Envoy looks entry points up by name and signature; a missing export or a wrong
signature only shows up as a runtime load failure, so the binary is checked here
with wabt's wasm-objdump (CI installs wabt; the test fails rather than skips
without it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WASM = ROOT / "examples" / "header-filter" / "header-filter.wasm"

# proxy-wasm ABI v0.2.1 signatures, as wasm-objdump prints them.
EXPECTED_EXPORTS = {
    "proxy_abi_version_0_2_1": "() -> nil",
    "proxy_on_memory_allocate": "(i32) -> i32",
    "malloc": "(i32) -> i32",
    "proxy_on_context_create": "(i32, i32) -> nil",
    "proxy_on_vm_start": "(i32, i32) -> i32",
    "proxy_on_configure": "(i32, i32) -> i32",
    "proxy_on_request_headers": "(i32, i32, i32) -> i32",
    "proxy_on_response_headers": "(i32, i32, i32) -> i32",
    "proxy_on_new_connection": "(i32) -> i32",
    "proxy_on_downstream_data": "(i32, i32, i32) -> i32",
    "proxy_on_done": "(i32) -> i32",
    "proxy_on_delete": "(i32) -> nil",
}
EXPECTED_IMPORTS = {
    "env.proxy_log": "(i32, i32, i32) -> i32",
    "env.proxy_get_buffer_bytes": "(i32, i32, i32, i32, i32) -> i32",
    "env.proxy_set_buffer_bytes": "(i32, i32, i32, i32, i32) -> i32",
    "env.proxy_add_header_map_value": "(i32, i32, i32, i32, i32) -> i32",
    "env.proxy_close_stream": "(i32) -> i32",
}


def _objdump(*args: str) -> str:
    tool = shutil.which("wasm-objdump")
    if tool is None:
        pytest.fail("wasm-objdump not found: install wabt (e.g. apt-get install wabt)")
    result = subprocess.run(
        [tool, *args, str(WASM)], check=True, capture_output=True, text=True, timeout=30
    )
    return result.stdout


def _signatures() -> tuple[dict[str, str], dict[str, str]]:
    """Exported and imported function names mapped to their signatures."""
    details = _objdump("-x")
    types = dict(re.findall(r"^ - type\[(\d+)\] (.+)$", details, re.MULTILINE))
    func_sigs = dict(re.findall(r"^ - func\[(\d+)\] sig=(\d+)", details, re.MULTILINE))
    exports = {
        name: types[func_sigs[index]]
        for index, name in re.findall(r'^ - func\[(\d+)\] .*-> "([^"]+)"$', details, re.MULTILINE)
    }
    imports = {
        name: types[sig]
        for sig, name in re.findall(r"^ - func\[\d+\] sig=(\d+) <[^>]*> <- (\S+)$", details, re.M)
    }
    return exports, imports


def test_exports_are_the_abi_entry_points():
    """Exactly the ABI callbacks the filter implements are exported, with v0.2.1 signatures."""
    exports, _ = _signatures()
    assert exports == EXPECTED_EXPORTS
    assert re.search(r'^ - memory\[0\] -> "memory"$', _objdump("-x", "-j", "Export"), re.M)


def test_imports_are_only_proxy_wasm_host_functions():
    """The module needs nothing but five proxy-wasm host functions (no WASI, no libc)."""
    _, imports = _signatures()
    assert imports == EXPECTED_IMPORTS


def test_makefile_exports_match_the_module():
    """The Makefile's export list and the committed module agree, so a rebuild keeps the ABI."""
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^WASM_EXPORTS := ((?:.*\\\n)*.*)$", makefile, re.MULTILINE)
    assert match, "Makefile has no WASM_EXPORTS list"
    assert set(match.group(1).replace("\\\n", " ").split()) == set(EXPECTED_EXPORTS)


def test_module_is_stripped():
    """No custom sections (names, producers, debug info): the committed binary stays small."""
    headers = _objdump("-h")
    assert "Custom" not in headers
    assert WASM.stat().st_size < 32 * 1024


def test_committed_module_matches_its_source(tmp_path: Path) -> None:
    """`make wasm` rebuilds exactly the committed .wasm, so the binary is never stale."""
    if shutil.which("clang") is None or shutil.which("wasm-ld") is None:
        pytest.fail("clang and wasm-ld not found: install clang and lld (CI does)")
    rebuilt = tmp_path / "header-filter.wasm"
    subprocess.run(
        ["make", "--no-print-directory", "-s", "wasm", f"WASM_FILTER={rebuilt}"],
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    assert rebuilt.read_bytes() == WASM.read_bytes(), "run `make wasm` and commit the result"
